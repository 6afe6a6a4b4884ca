#!/usr/bin/env python
"""Holding up under load: a slice of the README main job (``train_mdeq_classifier.py``) and of the char recipe
(``train_deq_lm.py --config scripts/configs/deq-transformer-char-upg.json``) timed quiet, then beside one and three
busy processes (CPU-bound loops the benchmark starts and stops), under the library's thread defaults and the old
ones, in one run; prints each slowdown ratio (training wall time beside N busy / quiet, medians over repeats).

Usage:
    python scripts/benchmark_load.py --train_file ../shared/data/tinyshakespeare/input.txt
        [--jobs main,char] [--settings library,old,single,old_passive,library_passive] [--busy 0,1,3] [--repeats 2]
        [--main_steps 60] [--char_steps 60] [--busy_kind python|torch] [--output_file load.json]

Settings: ``library`` (no thread flag: the training layer picks the threads), ``old`` (torch's own thread count
and OpenMP's default waiting, what the library did before it chose), ``single`` (``--torch_num_threads 1``),
``old_passive`` / ``library_passive`` (``old`` / ``library`` with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's threads
sleep at once when they wait).
The machine's load average is printed at the start and before each run: a "quiet" run on a shared machine is
only as quiet as the other jobs let it be.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.flags import outside, split_commas
from benchmarks.load import (
    BUSY_LOOPS,
    char_job,
    main_job,
    run_load_benchmark,
    slowdown_lines,
    standard_settings,
)
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag

JOBS = ("main", "char")
SETTINGS = ("library", "old", "single", "old_passive", "library_passive")


def busy_counts(text: str) -> list[int]:
    """``"3,0,1"`` -> ``[0, 1, 3]``: the distinct numbers of busy processes of ``--busy``; ``ValueError`` when a
    part is not an integer."""
    return sorted({int(v) for v in text.split(",")})


@dataclass(frozen=True)
class LoadFlags:
    """The flags of this script."""

    train_file: str | None = flag(None, "the char recipe's text (needed by the char job)")
    jobs: str = flag("main,char", "comma-separated subset of main,char")
    settings: str = flag("library,old", "comma-separated subset of " + ",".join(SETTINGS))
    busy: str = flag("0,1,3", "numbers of busy processes, comma-separated (0: quiet)")
    busy_kind: str = flag("python", "the busy loop", choices=sorted(BUSY_LOOPS))
    repeats: int = flag(2, "runs of each job, setting and load", range=count_range(1))
    main_steps: int = flag(60, "training steps of the main job's slice", range=count_range(1))
    char_steps: int = flag(60, "training steps of the char recipe's slice", range=count_range(1))
    run_timeout: float | None = flag(None, "stop a run after this many seconds (reported as '>')")
    output_file: str | None = flag(None, "write every timing as JSON")

    @property
    def job_names(self) -> list[str]:
        """The jobs of ``--jobs``, in order."""
        return split_commas(self.jobs)

    @property
    def setting_names(self) -> list[str]:
        """The thread settings of ``--settings``, in order."""
        return split_commas(self.settings)

    @property
    def busy_list(self) -> list[int]:
        """The loads of ``--busy``, ascending."""
        return busy_counts(self.busy)


def parse_args(argv: list[str] | None = None) -> LoadFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(LoadFlags, description=__doc__.split("\n\n")[0])
    (flags,) = parser.parse_into_dataclasses(argv)
    for option, text, values, allowed in (
        ("--jobs", flags.jobs, flags.job_names, JOBS),
        ("--settings", flags.settings, flags.setting_names, SETTINGS),
    ):
        if outside(values, allowed) or not values:
            parser.error(
                f"argument {option}: got {text!r}; choose a comma-separated subset of {list(allowed)}"
            )
    try:
        busy = flags.busy_list
    except ValueError:
        parser.error(
            f"argument --busy: got {flags.busy!r}; expected comma-separated integers >= 0, e.g. 0,1,3"
        )
    if busy[0] < 0 or 0 not in busy:
        parser.error(f"argument --busy: got {busy}; the list needs 0 (quiet, the reference) and no negative")
    if "char" in flags.job_names and (flags.train_file is None or not Path(flags.train_file).is_file()):
        parser.error(f"argument --train_file: the char job needs a text file, got {flags.train_file!r}")
    if flags.output_file is not None and Path(flags.output_file).exists():
        parser.error(f"argument --output_file: {flags.output_file} exists; choose another name")
    return flags


def run_settings(flags: LoadFlags, jobs: list, settings: list) -> dict:
    """The ``settings`` entry of the JSON: the thread settings and every flag, lists as lists (as before)."""
    threads = [asdict(s) for s in settings]
    resolved = {"jobs": flags.job_names, "settings": flags.setting_names, "busy": flags.busy_list}
    return {"jobs": [j.argv for j in jobs], "threads": threads} | asdict(flags) | resolved


def main(argv: list[str] | None = None) -> dict:
    """Time the job slices under every setting and load, print the slowdowns; returns every timing."""
    flags = parse_args(argv)
    jobs = [
        main_job(flags.main_steps) if j == "main" else char_job(flags.train_file, flags.char_steps)
        for j in flags.job_names
    ]
    available = standard_settings()
    settings = [available[s] for s in flags.setting_names]
    print(
        f"CPUs allowed: {len(os.sched_getaffinity(0))}; load average at the start: {os.getloadavg()}",
        flush=True,
    )
    start = time.perf_counter()
    results = run_load_benchmark(
        jobs,
        settings,
        flags.busy_list,
        flags.repeats,
        flags.busy_kind,
        echo=lambda s: print(s, flush=True),
        timeout=flags.run_timeout,
    )
    lines = slowdown_lines(results, jobs, settings, flags.busy_list)
    print("\n".join(["", *lines]))
    total = time.perf_counter() - start
    print(f"\n{total:.0f} s in all; load average at the end: {os.getloadavg()}")
    out = {
        "settings": run_settings(flags, jobs, settings),
        "loadavg_start": results.loadavg_start,
        "timings": [asdict(t) for t in results.timings],
        "table": lines,
        "total_time_s": total,
    }
    if flags.output_file is not None:
        Path(flags.output_file).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
