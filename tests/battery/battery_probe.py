"""The battery's oracle and its record: every hostile input has exactly three possible outcomes.

- ``refused``: one clear error naming the input (the flag or field and the value), within seconds, nothing
  written;
- ``handled``: a correct run (the value is valid and reaches the run unchanged, or the result is right);
- ``failed``: anything else (a traceback, an unclear or missing error, a wrong result, a hang, files written).

``probe_*`` helpers classify an attempt, record it (``RESULTS``, written as JSON at the end of the session when
``BATTERY_RESULTS`` names a file: ``scripts/bad_input_table.py`` makes ``docs/bad_input.md`` from it) and fail
the test on ``failed``. Known defects, when there are any, are listed once, in ``KNOWN``: the tests mark those
cases ``xfail`` and the table gives the reason."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

#: the hypothesis profile of the battery: ``ci`` (default, quick) or ``long`` (``HYPOTHESIS_PROFILE=long``);
#: both are registered in tests/conftest.py
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
BATTERY = settings(
    settings.get_profile(PROFILE if PROFILE in ("ci", "long") else "ci"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the hostile values are few and already small
)
#: an attempt that takes longer than this has hung (the battery's inputs are all tiny)
SECONDS = 30.0
KNOWN_HANG_SECONDS = 1.5

NAN, INF = float("nan"), float("inf")


# -- the record ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    entry: str  # the entry point, e.g. "train_deq_lm.py flags"
    name: str  # the flag, key, field or input
    kind: str  # the class of hostile value: nan, inf, zero, negative, huge, wrong_type, empty, unicode, bool, ...
    value: str  # repr of the value
    outcome: str  # refused | handled | failed
    detail: str = ""  # the error message, or what went wrong
    known: str = ""  # the KNOWN reason when this case is a known defect fixed on another branch


RESULTS: list[Attempt] = []


class BatteryFailure(AssertionError):
    """An attempt whose outcome is neither a clear refusal nor a correct run."""


# -- known defects ---------------------------------------------------------------------------------------------------
#: (entry, name, kind) -> why the case fails today and where it is (or is to be) fixed, e.g. ``"fixed on branch
#: x: ..."`` or ``"not fixed (reported): ..."``; ``kind`` "*" matches every kind. The tests mark these cases
#: ``xfail`` and the table shows the reason. Empty: every case of the battery passes (issue 16).
KNOWN: dict[tuple[str, str, str], str] = {}


def known_reason(entry: str, name: str, kind: str) -> str:
    return KNOWN.get((entry, name, kind)) or KNOWN.get((entry, name, "*"), "")


def limit(entry: str, name: str, kind: str) -> float:
    """The time limit of an attempt: a known defect (which may hang) is cut short, to keep the battery quick."""
    return KNOWN_HANG_SECONDS if known_reason(entry, name, kind) else SECONDS


def case(entry: str, name: str, kind: str, *before: Any) -> Any:
    """A ``pytest.param`` of ``(*before, name, kind)``, marked ``xfail`` when ``KNOWN`` lists it."""
    reason = known_reason(entry, name, kind)
    marks = [pytest.mark.xfail(strict=False, reason=reason)] if reason else []
    return pytest.param(*before, name, kind, marks=marks, id="-".join(map(str, (*before, name, kind))))


def record(entry: str, name: str, kind: str, value: Any, outcome: str, detail: str = "") -> None:
    """Record an attempt; fail the test when its outcome is ``failed``."""
    text = value if isinstance(value, str) and kind.startswith("raw:") else _short(repr(value))
    attempt = Attempt(entry, name, kind, text, outcome, _short(detail, 300), known_reason(entry, name, kind))
    RESULTS.append(attempt)
    if outcome == "failed":
        raise BatteryFailure(f"{entry} {name}={text} ({kind}): {detail}")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def results_as_dicts() -> list[dict[str, str]]:
    return [asdict(a) for a in RESULTS]


# -- time limit ---------------------------------------------------------------------------------------------------
class Hang(Exception):
    """The attempt ran past ``SECONDS``."""


@contextlib.contextmanager
def within_seconds(seconds: float = SECONDS) -> Iterator[None]:
    """Raise ``Hang`` in the attempt when it runs past ``seconds`` (SIGALRM: main thread, POSIX)."""

    def _alarm(signum, frame):
        raise Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- naming the value -----------------------------------------------------------------------------------------------
def value_spellings(value: Any) -> list[str]:
    """The ways an error message may write ``value``."""
    spellings = {repr(value), str(value)}
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a JSON flag's text, as the parsed value
            spellings.add(repr(json.loads(value)))
        with contextlib.suppress(ValueError, OverflowError):
            number = float(value)
            spellings |= {repr(number), str(number)}
            if number.is_integer():
                spellings.add(str(int(number)))
    if isinstance(value, int) and not isinstance(value, bool):  # as a float flag reads it
        spellings |= {repr(float(value)), str(float(value))}
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        spellings.add(str(int(value)))
    return [s for s in spellings if s]


def names_value(message: str, value: Any) -> bool:
    if isinstance(value, str) and value == "":
        return "''" in message or '""' in message
    return any(s in message for s in value_spellings(value))


def timed(fn: Callable[[], Any], seconds: float = SECONDS) -> tuple[Any, BaseException | None, float]:
    """``(result, exception, seconds)`` of ``fn()`` under ``within_seconds(seconds)``."""
    start = time.perf_counter()
    try:
        with within_seconds(seconds):
            return fn(), None, time.perf_counter() - start
    except (Exception, SystemExit) as err:  # noqa: BLE001 - every outcome is classified by the caller
        return None, err, time.perf_counter() - start


# -- hostile values -----------------------------------------------------------------------------------------------
HUGE_INTS = (10**12, 2**63, 10**30)
non_ascii_text = st.text(
    alphabet=st.characters(min_codepoint=0xA1, blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6
)


def hostile_text(kind: str, numeric: str) -> st.SearchStrategy[str]:
    """The command-line spelling of hostile values of ``kind`` for a flag of ``numeric`` type (``int``,
    ``float`` or ``str``)."""
    return {
        "nan": st.sampled_from(["nan", "NaN", "-nan"]),
        "inf": st.sampled_from(["inf", "-inf", "Infinity", "1e309", "-1e400"]),
        "zero": st.sampled_from(["0", "0.0", "-0", "0e0"] if numeric == "float" else ["0", "-0", "00"]),
        "negative": (
            st.floats(-1e12, -1e-12).map(repr) if numeric == "float" else st.integers(-(10**6), -1).map(str)
        ),
        "huge": st.sampled_from([str(v) for v in HUGE_INTS] + (["1e308"] if numeric == "float" else [])),
        "wrong_type": st.sampled_from(["abc", "1,5", "[1]", "{}", "None", "0x10", "1.5", "1e3", "1/2"]),
        "empty": st.sampled_from(["", " "]),
        "unicode": st.one_of(non_ascii_text, st.sampled_from(["٣", "１２", "½", "∞", "𝟗"])),
        "bool": st.sampled_from(["True", "true", "False", "false"]),
    }[kind]


VALUE_KINDS = ("nan", "inf", "zero", "negative", "huge", "wrong_type", "empty", "unicode", "bool")


def hostile_json(kind: str) -> st.SearchStrategy[Any]:
    """Hostile values of ``kind`` as Python objects (a JSON recipe, a config keyword)."""
    return {
        "nan": st.just(NAN),
        "inf": st.sampled_from([INF, -INF]),
        "zero": st.sampled_from([0, 0.0, -0.0]),
        "negative": st.one_of(st.integers(-(10**6), -1), st.floats(-1e12, -1e-12)),
        "huge": st.sampled_from([*HUGE_INTS, 1e308]),
        "wrong_type": st.sampled_from(["3", "abc", [1], {"a": 1}, None, 2.5]),
        "empty": st.sampled_from(["", [], {}]),
        "unicode": st.one_of(non_ascii_text, st.sampled_from(["٣", "１２"])),
        "bool": st.sampled_from([True, False]),
    }[kind]
