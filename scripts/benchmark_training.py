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

import json
import sys
import time
from dataclasses import dataclass
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
from benchmarks.flags import outside, split_commas
from benchmarks.tables import table
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag

DEFAULT_LM_CONFIG = Path(__file__).resolve().parent / "configs" / "deq-transformer-char-upg.json"
DEFAULT_EVAL_STEPS = {"lm": 200, "mdeq": 15}
#: the lm family evaluates the first 512 validation blocks (of 1742 in tinyshakespeare): a DEQ evaluation runs 30
#: solver iterations per block, ~1 min of one CPU core over the whole split, so ten of them would cost more than
#: the DEQ's training
DEFAULT_MAX_EVAL_SAMPLES = {"lm": 512, "mdeq": None}


@dataclass(frozen=True)
class TrainingBenchmarkFlags:
    """The flags of this script."""

    families: str = flag("lm,mdeq", "comma-separated subset of lm,mdeq")
    train_file: str | None = flag(None, "the text of the lm family (e.g. tinyshakespeare)")
    lm_config: str = flag(str(DEFAULT_LM_CONFIG), "the DEQ-Transformer recipe (train_deq_lm.py --config)")
    torch_num_threads: int = flag(
        1,
        "CPU intra-op threads of every run (default 1: on a CPU shared with other jobs, OpenMP "
        "threads that lose their core stall every op)",
        range=count_range(1),
    )
    max_train_steps: int | None = flag(
        None, "steps of every run (default: each recipe's)", range=count_range(1)
    )
    eval_steps: int | None = flag(
        None, "evaluate every N steps (default: 200 lm, 15 mdeq)", range=count_range(1)
    )
    max_train_samples: int | None = flag(
        None, "truncate every training set (smoke runs)", range=count_range(1)
    )
    max_eval_samples: int | None = flag(
        None,
        "evaluate on the first N validation examples (default: 512 lm blocks, every mdeq image)",
        range=count_range(1),
    )
    lm_preset: str | None = flag(None, "DEQ preset of the lm family (default: the recipe's)")
    mdeq_preset: str | None = flag(None, "DEQ preset of the mdeq family (default mdeq-tiny-digits)")
    output_file: str | None = flag(None, "also write every number of the run as JSON here")
    overwrite_output_file: bool = flag(False, "replace an existing --output_file")

    @property
    def family_list(self) -> list[str]:
        """The families of ``--families``, in order."""
        return split_commas(self.families)


def _check_files(parser: FlagParser, flags: TrainingBenchmarkFlags) -> None:
    """One ``error:`` line for a missing input file of the lm family or an existing ``--output_file``."""
    if "lm" in flags.family_list:
        if flags.train_file is None:
            parser.error("argument --train_file: the lm family needs it (e.g. tinyshakespeare's input.txt)")
        if not Path(flags.train_file).is_file():
            parser.error(f"argument --train_file: no such file: {flags.train_file}")
        if not Path(flags.lm_config).is_file():
            parser.error(f"argument --lm_config: no such file: {flags.lm_config}")
    if flags.output_file is not None and Path(flags.output_file).exists() and not flags.overwrite_output_file:
        parser.error(f"argument --output_file: {flags.output_file} exists; pass --overwrite_output_file")


def parse_args(argv: list[str] | None = None) -> TrainingBenchmarkFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value, here or in a training flag the
    runs get, is one ``error:`` line."""
    parser = FlagParser(TrainingBenchmarkFlags, description=__doc__.split("\n\n")[0])
    (flags,) = parser.parse_into_dataclasses(argv)
    unknown = sorted(set(outside(flags.family_list, FAMILIES)))
    if unknown or not flags.family_list:
        parser.error(f"argument --families: a comma-separated subset of lm,mdeq; got {unknown or 'nothing'}")
    _check_files(parser, flags)
    for family in flags.family_list:  # a bad training flag: its one error line now, before any training
        for run_argv in run_argvs(flags, family):
            parse_run(FAMILIES[family], run_argv)
    return flags


def run_argvs(flags: TrainingBenchmarkFlags, family: str) -> tuple[list[str], list[str]]:
    """``(DEQ flags, explicit flags)`` of ``family``'s two runs."""
    common = ["--torch_num_threads", str(flags.torch_num_threads), "--disable_tqdm"]
    common += ["--eval_steps", str(flags.eval_steps or DEFAULT_EVAL_STEPS[family])]
    eval_samples = flags.max_eval_samples or DEFAULT_MAX_EVAL_SAMPLES[family]
    common += ["--max_eval_samples", str(eval_samples)] if eval_samples else []
    optional = {"max_train_steps": flags.max_train_steps, "max_train_samples": flags.max_train_samples}
    for name, value in optional.items():
        if value is not None:
            common += [f"--{name}", str(value)]
    if family == "lm":
        text = ["--train_file", flags.train_file]
        deq = ["--config", flags.lm_config, *text, *common]
        deq += ["--preset", flags.lm_preset] if flags.lm_preset else []
        return deq, [*EXPLICIT_LM_FLAGS, *text, *common]
    deq = [*common, "--preset", flags.mdeq_preset] if flags.mdeq_preset else common
    return deq, common


def main(argv: list[str] | None = None) -> dict:
    """Train both models of every family of ``--families``, print the comparison; returns every number."""
    flags = parse_args(argv)
    torch.set_num_threads(flags.torch_num_threads)
    started = time.perf_counter()
    print(
        f"# DEQ against explicit models (CPU, {flags.torch_num_threads} threads, torch {torch.__version__})\n"
    )
    results: dict = {"families": {}, "targets": []}
    lines: list[str] = []
    for family in flags.family_list:
        deq_argv, explicit_argv = run_argvs(flags, family)
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
    results["settings"] = {"torch_num_threads": flags.torch_num_threads, "torch_version": torch.__version__}
    results["total_time_s"] = time.perf_counter() - started
    print(f"total benchmark time {results['total_time_s']:.0f} s")
    if flags.output_file is not None:
        Path(flags.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(flags.output_file).write_text(json.dumps(json_ready(results), indent=2, allow_nan=False) + "\n")
        print(f"results written to {flags.output_file}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
