"""Run a training script's entry point in-process on hostile flags and classify the outcome (battery_probe)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from battery_probe import SECONDS, names_value, record, timed
from script_loading import load_script

SCRIPT_MODULES = {"mdeq": "train_mdeq_classifier", "lm": "train_deq_lm"}
ENTRIES = {"mdeq": "train_mdeq_classifier.py flags", "lm": "train_deq_lm.py flags"}


def script(family: str):
    return load_script(SCRIPT_MODULES[family])


def flag_parser(family: str) -> argparse.ArgumentParser:
    """The training flags of ``family``'s script, as a parser that checks nothing beyond argparse."""
    from hf_deq.training.arguments import training_parser

    return training_parser(script(family).TASK)


def flag_defaults(family: str) -> dict[str, Any]:
    return {a.dest: a.default for a in flag_parser(family)._actions}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


def written(paths: list[Path]) -> list[str]:
    """The paths that a refused or parse-only attempt must have left absent or empty (an empty folder is no
    loss to anyone)."""
    return [str(p) for p in paths if p.exists() and not (p.is_dir() and not any(p.iterdir()))]


def probe_entry(
    entry: str,
    name: str,
    kind: str,
    shown: Any,
    call: Callable[[], Any],
    capsys,
    *,
    names: list[str],
    valid: bool | None,
    check_result: Callable[[Any], str] | None = None,
    untouched: list[Path] = (),
) -> str:
    """Run ``call`` (a script's ``parse_args`` or ``main``) and record its outcome.

    ``refused``: ``SystemExit(2)`` with exactly one ``error:`` line on stderr that names one of ``names`` (the
    flag, the recipe key) and the value ``shown``, no traceback, nothing in ``untouched`` created. ``handled``:
    it returned, the value was valid (``valid`` not False) and ``check_result(result)`` found nothing wrong."""
    capsys.readouterr()
    result, err, seconds = timed(call)
    captured = capsys.readouterr()
    stray = written(list(untouched))
    if seconds > SECONDS or (err is not None and type(err).__name__ == "Hang"):
        return _fail(entry, name, kind, shown, f"took {seconds:.1f} s")
    if err is None:
        if valid is False:
            return _fail(entry, name, kind, shown, "accepted a value that cannot be right")
        problem = check_result(result) if check_result else ""
        if problem:
            return _fail(entry, name, kind, shown, problem)
        record(entry, name, kind, shown, "handled")
        return "handled"
    if not isinstance(err, SystemExit):
        return _fail(entry, name, kind, shown, f"{type(err).__name__}: {err}")
    lines = error_lines(captured.err)
    if err.code != 2:
        return _fail(
            entry, name, kind, shown, f"exit status {err.code!r} (not 2); stderr: {captured.err[-200:]}"
        )
    if "Traceback" in captured.err or len(lines) != 1:
        return _fail(entry, name, kind, shown, f"{len(lines)} error lines: {captured.err[-300:]}")
    line = lines[0]
    if not any(n in line for n in names):
        return _fail(entry, name, kind, shown, f"the error does not name {names[0]}: {line}")
    if not names_value(line, shown):
        return _fail(entry, name, kind, shown, f"the error does not show the value: {line}")
    if stray:
        return _fail(entry, name, kind, shown, f"refused, but wrote {stray}")
    if valid is True:
        return _fail(entry, name, kind, shown, f"refused a valid value: {line}")
    record(entry, name, kind, shown, "refused", line)
    return "refused"


def _fail(entry, name, kind, shown, detail) -> str:
    record(entry, name, kind, shown, "failed", detail)
    return "failed"
