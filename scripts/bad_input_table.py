#!/usr/bin/env python
"""Run the bad-input battery (tests/battery) and write its table, docs/bad_input.md: by entry point, the hostile
inputs tried, refused clearly, handled correctly and failed (known defects fixed on another branch apart from new
ones), then every failure class with an example and what happened.

    python scripts/bad_input_table.py                      # the quick "ci" profile
    HYPOTHESIS_PROFILE=long python scripts/bad_input_table.py
    python scripts/bad_input_table.py --from_json results.json --output -   # no run; print the table
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hf_deq.training.flags import FlagParser, flag

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TableFlags:
    """The flags of this script."""

    from_json: str | None = flag(None, "the battery's record (BATTERY_RESULTS) instead of a run")
    output: str = flag(str(REPO / "docs" / "bad_input.md"), "the table ('-': stdout)")


def flag_parser() -> FlagParser:
    """The parser of this script's flags."""
    return FlagParser(TableFlags, description=__doc__)


def parse_args(argv: list[str] | None = None) -> TableFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = flag_parser()
    (flags,) = parser.parse_into_dataclasses(argv)
    if flags.from_json is not None and not Path(flags.from_json).is_file():
        parser.error(f"argument --from_json: no such file: {flags.from_json!r}")
    return flags


def run_battery(results: Path) -> int:
    """Run tests/battery with ``BATTERY_RESULTS=results``; returns pytest's exit status."""
    env = {**os.environ, "BATTERY_RESULTS": str(results), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "tests/battery"]
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def distinct(attempts: list[dict]) -> list[dict]:
    """One attempt per (entry, name, kind, value): hypothesis may draw a value twice."""
    seen: dict[tuple, dict] = {}
    for a in attempts:
        seen.setdefault((a["entry"], a["name"], a["kind"], a["value"]), a)
    return list(seen.values())


def summary_rows(attempts: list[dict]) -> list[tuple]:
    by_entry: dict[str, list[dict]] = defaultdict(list)
    for a in attempts:
        by_entry[a["entry"]].append(a)
    rows = []
    for entry, items in by_entry.items():
        failed = [a for a in items if a["outcome"] == "failed"]
        other_branch = sum(1 for a in failed if a["known"].startswith("fixed on branch"))
        rows.append(
            (
                entry,
                len({(a["name"]) for a in items}),
                len(items),
                sum(a["outcome"] == "refused" for a in items),
                sum(a["outcome"] == "handled" for a in items),
                other_branch,
                len(failed) - other_branch,
            )
        )
    return rows


def failure_rows(attempts: list[dict]) -> list[tuple]:
    """One row per (status, input name, what happened first): the entries and value classes it was seen in."""
    groups: dict[tuple, dict] = {}
    for a in attempts:
        if a["outcome"] != "failed":
            continue
        key = (a["known"] or "NEW, unmarked", a["name"])
        group = groups.setdefault(key, {"entries": set(), "kinds": set(), "example": a})
        group["entries"].add(a["entry"])
        group["kinds"].add(a["kind"])
    rows = []
    for (status, name), g in sorted(groups.items()):
        ex = g["example"]
        rows.append((name, ", ".join(sorted(g["kinds"])), ", ".join(sorted(g["entries"])), ex["value"],
                     ex["detail"], status))  # fmt: skip
    return rows


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(attempts: list[dict], command: str) -> str:
    attempts = distinct(attempts)
    total = summary_rows(attempts)
    lines = [
        "# Bad input: the battery's table",
        "",
        "Produced by `tests/battery` (hypothesis; issue 16) with `"
        + command
        + "`. Every hostile input has three",
        "possible outcomes: **refused** (one clear error naming the flag, key, field or input and the value, within",
        "seconds, nothing written), **handled** (a correct run: the value reaches the run unchanged, or the result",
        "is finite and of the right shape), or **failed** (anything else). Failures are counted apart when a branch",
        "fixes them (the test is marked `xfail` until that branch is merged) from new ones (reported).",
        "",
        "| entry point | names | inputs tried | refused clearly | handled correctly | failed: fixed on a branch "
        "| failed: new |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in total:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    sums = [sum(r[i] for r in total) for i in range(1, 7)]
    lines.append("| **all** | " + " | ".join(f"**{s}**" for s in sums) + " |")
    lines += [
        "",
        "## Failure classes",
        "",
        "| input | value classes | entry points | example | what happened | status |",
        "|---|---|---|---|---|---|",
    ]
    failures = failure_rows(attempts)
    for row in failures:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if not failures:
        lines[-2:] = ["None: every input tried was refused clearly or handled correctly."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the battery (or read ``--from_json``) and write its table to ``--output``."""
    flags = parse_args(argv)
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    command = f"HYPOTHESIS_PROFILE={profile} python scripts/bad_input_table.py"
    if flags.from_json is None:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "battery.json"
            status = run_battery(results)
            if not results.is_file():
                flag_parser().error(f"the battery wrote no record (pytest exit status {status})")
            attempts = json.loads(results.read_text())
    else:
        attempts = json.loads(Path(flags.from_json).read_text())
    text = render(attempts, command)
    if flags.output == "-":
        sys.stdout.write(text)
    else:
        Path(flags.output).write_text(text)
        print(f"wrote {flags.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
