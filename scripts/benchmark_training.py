#!/usr/bin/env python
"""Train a DEQ and the explicit model a user would pick instead, by the same loop on the same data and machine,
in one invocation; print both validation results, parameters, training wall times, and the DEQ's training time
to the explicit model's final validation loss (LM) or accuracy (MDEQ), as a ratio to the explicit model's time.

- ``lm``: transformers' ``GPT2LMHeadModel`` (4 layers, width 128, 4 heads, no dropout; batch 12, AdamW 1e-3
  cosine to 1e-4, 100 warm-up steps, 2000 steps) against the DEQ recipe ``--lm_config`` (default
  ``scripts/configs/deq-transformer-char-upg.json``) on ``--train_file`` (char tokenizer, last 10% validation).
- ``mdeq``: a ResNet-style CNN against ``mdeq-tiny-digits``, both with the README recipe of
  ``train_mdeq_classifier.py`` on the built-in digits.

Both models of a family evaluate every ``--eval_steps`` steps (default 200 for lm, on the first 512 validation
blocks; 15 for mdeq, on every validation image). The pieces live
in ``benchmarks.against_explicit``; the time to target is interpolated in training time between the two
evaluations around the crossing (the first evaluation there is reported too).

Usage:
    python scripts/benchmark_training.py --train_file input.txt [--families lm,mdeq] [--torch_num_threads 1]
        [--output_file results.json [--overwrite_output_file]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.against_explicit import (
    EXPLICIT_LM_FLAGS,
    FAMILIES,
    compare,
    comparison_lines,
    json_ready,
    lm_targets,
    parse_run,
)
from benchmarks.tables import table

DEFAULT_LM_CONFIG = Path(__file__).resolve().parent / "configs" / "deq-transformer-char-upg.json"
DEFAULT_EVAL_STEPS = {"lm": 200, "mdeq": 15}
#: the lm family evaluates the first 512 validation blocks (of 1742 in tinyshakespeare): a DEQ evaluation runs 30
#: solver iterations per block, ~1 min of one CPU core over the whole split, so ten of them would cost more than
#: the DEQ's training
DEFAULT_MAX_EVAL_SAMPLES = {"lm": 512, "mdeq": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", default="lm,mdeq", help="comma-separated subset of lm,mdeq (default: both)"
    )
    parser.add_argument("--train_file", default=None, help="the text of the lm family (e.g. tinyshakespeare)")
    parser.add_argument(
        "--lm_config",
        default=str(DEFAULT_LM_CONFIG),
        help="the DEQ-Transformer recipe (train_deq_lm.py --config)",
    )
    parser.add_argument(
        "--torch_num_threads",
        type=int,
        default=1,
        help="CPU intra-op threads of every run (default 1: on a CPU shared with other jobs, OpenMP threads that "
        "lose their core stall every op)",
    )
    parser.add_argument(
        "--max_train_steps", type=int, default=None, help="steps of every run (default: each recipe's)"
    )
    parser.add_argument(
        "--eval_steps", type=int, default=None, help="evaluate every N steps (default: 200 lm, 15 mdeq)"
    )
    parser.add_argument(
        "--max_train_samples", type=int, default=None, help="truncate every training set (smoke runs)"
    )
    parser.add_argument(
        "--max_eval_samples",
        type=int,
        default=None,
        help="evaluate on the first N validation examples (default: 512 lm blocks, every mdeq image)",
    )
    parser.add_argument(
        "--lm_preset", default=None, help="DEQ preset of the lm family (default: the recipe's)"
    )
    parser.add_argument(
        "--mdeq_preset", default=None, help="DEQ preset of the mdeq family (default mdeq-tiny-digits)"
    )
    parser.add_argument("--output_file", default=None, help="also write every number of the run as JSON here")
    parser.add_argument(
        "--overwrite_output_file", action="store_true", help="replace an existing --output_file"
    )
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown or not args.families:
        parser.error(f"argument --families: a comma-separated subset of lm,mdeq; got {unknown or 'nothing'}")
    for name in (
        "torch_num_threads",
        "max_train_steps",
        "eval_steps",
        "max_train_samples",
        "max_eval_samples",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"argument --{name}: must be an integer >= 1, got {value}")
    if "lm" in args.families:
        if args.train_file is None:
            parser.error("argument --train_file: the lm family needs it (e.g. tinyshakespeare's input.txt)")
        if not Path(args.train_file).is_file():
            parser.error(f"argument --train_file: no such file: {args.train_file}")
        if not Path(args.lm_config).is_file():
            parser.error(f"argument --lm_config: no such file: {args.lm_config}")
    if args.output_file is not None and Path(args.output_file).exists() and not args.overwrite_output_file:
        parser.error(f"argument --output_file: {args.output_file} exists; pass --overwrite_output_file")
    args.runs = {family: run_argvs(args, family) for family in args.families}
    for (
        family,
        argvs,
    ) in args.runs.items():  # a bad training flag: its one error line now, before any training
        for argv in argvs:
            parse_run(FAMILIES[family], argv)
    return args


def run_argvs(args: argparse.Namespace, family: str) -> tuple[list[str], list[str]]:
    """``(DEQ flags, explicit flags)`` of ``family``'s two runs."""
    common = ["--torch_num_threads", str(args.torch_num_threads), "--disable_tqdm"]
    common += ["--eval_steps", str(args.eval_steps or DEFAULT_EVAL_STEPS[family])]
    eval_samples = args.max_eval_samples or DEFAULT_MAX_EVAL_SAMPLES[family]
    common += ["--max_eval_samples", str(eval_samples)] if eval_samples else []
    for name in ("max_train_steps", "max_train_samples"):
        if getattr(args, name) is not None:
            common += [f"--{name}", str(getattr(args, name))]
    if family == "lm":
        text = ["--train_file", args.train_file]
        deq = ["--config", args.lm_config, *text, *common]
        deq += ["--preset", args.lm_preset] if args.lm_preset else []
        return deq, [*EXPLICIT_LM_FLAGS, *text, *common]
    deq = [*common, "--preset", args.mdeq_preset] if args.mdeq_preset else common
    return deq, common


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_num_threads)
    started = time.perf_counter()
    print(
        f"# DEQ against explicit models (CPU, {args.torch_num_threads} threads, torch {torch.__version__})\n"
    )
    results: dict = {"families": {}, "targets": []}
    lines: list[str] = []
    for family in args.families:
        deq_argv, explicit_argv = args.runs[family]
        result = compare(FAMILIES[family], deq_argv, explicit_argv)
        result["argv"] = {"deq": deq_argv, "explicit": explicit_argv}
        results["families"][family] = result
        lines += comparison_lines(family, result) + [""]
        if family == "lm":
            results["targets"] += lm_targets(result)
    print("\n" + "\n".join(lines))
    if results["targets"]:
        rows = [[t["target"], t["measured"], "met" if t["met"] else "MISSED"] for t in results["targets"]]
        print("## Targets (this run)\n\n" + table(["target", "measured", "verdict"], rows) + "\n")
    results["settings"] = {"torch_num_threads": args.torch_num_threads, "torch_version": torch.__version__}
    results["total_time_s"] = time.perf_counter() - started
    print(f"total benchmark time {results['total_time_s']:.0f} s")
    if args.output_file is not None:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(json_ready(results), indent=2, allow_nan=False) + "\n")
        print(f"results written to {args.output_file}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
