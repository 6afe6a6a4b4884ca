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

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.load import (
    BUSY_LOOPS,
    char_job,
    main_job,
    run_load_benchmark,
    slowdown_lines,
    standard_settings,
)

JOBS = ("main", "char")
SETTINGS = ("library", "old", "single", "old_passive", "library_passive")


def csv_choices(parser: argparse.ArgumentParser, flag: str, text: str, allowed) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        parser.error(f"argument {flag}: got {text!r}; choose a comma-separated subset of {list(allowed)}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train_file", default=None, help="the char recipe's text (needed by the char job)")
    parser.add_argument("--jobs", default="main,char", help="comma-separated subset of main,char")
    parser.add_argument(
        "--settings", default="library,old", help="comma-separated subset of " + ",".join(SETTINGS)
    )
    parser.add_argument(
        "--busy", default="0,1,3", help="numbers of busy processes, comma-separated (0: quiet)"
    )
    parser.add_argument("--busy_kind", choices=sorted(BUSY_LOOPS), default="python", help="the busy loop")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each job, setting and load")
    parser.add_argument("--main_steps", type=int, default=60, help="training steps of the main job's slice")
    parser.add_argument(
        "--char_steps", type=int, default=60, help="training steps of the char recipe's slice"
    )
    parser.add_argument(
        "--run_timeout", type=float, default=None, help="stop a run after this many seconds (reported as '>')"
    )
    parser.add_argument("--output_file", default=None, help="write every timing as JSON")
    args = parser.parse_args(argv)
    args.jobs = csv_choices(parser, "--jobs", args.jobs, JOBS)
    args.settings = csv_choices(parser, "--settings", args.settings, SETTINGS)
    try:
        args.busy = sorted({int(v) for v in args.busy.split(",")})
    except ValueError:
        parser.error(
            f"argument --busy: got {args.busy!r}; expected comma-separated integers >= 0, e.g. 0,1,3"
        )
    if args.busy[0] < 0 or 0 not in args.busy:
        parser.error(
            f"argument --busy: got {args.busy}; the list needs 0 (quiet, the reference) and no negative"
        )
    for name in ("repeats", "main_steps", "char_steps"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: must be an integer >= 1, got {getattr(args, name)}")
    if "char" in args.jobs and (args.train_file is None or not Path(args.train_file).is_file()):
        parser.error(f"argument --train_file: the char job needs a text file, got {args.train_file!r}")
    if args.output_file is not None and Path(args.output_file).exists():
        parser.error(f"argument --output_file: {args.output_file} exists; choose another name")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    jobs = [
        main_job(args.main_steps) if j == "main" else char_job(args.train_file, args.char_steps)
        for j in args.jobs
    ]
    available = standard_settings()
    settings = [available[s] for s in args.settings]
    print(
        f"CPUs allowed: {len(os.sched_getaffinity(0))}; load average at the start: {os.getloadavg()}",
        flush=True,
    )
    start = time.perf_counter()
    results = run_load_benchmark(
        jobs,
        settings,
        args.busy,
        args.repeats,
        args.busy_kind,
        echo=lambda s: print(s, flush=True),
        timeout=args.run_timeout,
    )
    lines = slowdown_lines(results, jobs, settings, args.busy)
    print("\n".join(["", *lines]))
    total = time.perf_counter() - start
    print(f"\n{total:.0f} s in all; load average at the end: {os.getloadavg()}")
    out = {
        "settings": {"jobs": [j.argv for j in jobs], "threads": [asdict(s) for s in settings], **vars(args)},
        "loadavg_start": results.loadavg_start,
        "timings": [asdict(t) for t in results.timings],
        "table": lines,
        "total_time_s": total,
    }
    if args.output_file is not None:
        Path(args.output_file).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
