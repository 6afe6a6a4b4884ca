#!/usr/bin/env python
"""The phantom-gradient paper's analysis on a saved DEQ model: cosine similarity and relative error of
UPG(k, lambda) and NPG(k, lambda) against the exact implicit gradient, over k and lambda, on one batch of the
model's own evaluation data (arXiv 2111.05177, sec. 3 and Fig. 2; library: ``hf_deq.diagnostics.alignment_sweep``).

    # the README main job's model, and the same architecture at initialisation
    python scripts/gradient_alignment_sweep.py --model_name_or_path outputs/mdeq-tiny-digits \\
        --output_file outputs/alignment-digits.json
    python scripts/gradient_alignment_sweep.py --model_name_or_path outputs/mdeq-tiny-digits --at_init \\
        --output_file outputs/alignment-digits-init.json

The data is loaded as ``evaluate_deq.py`` loads it: the data flags of the model's ``training_record.json``, and
any family training-script flag after ``--`` over them. The probe batch is the first evaluation batch
(``--per_device_eval_batch_size`` after ``--`` sets its size). Writes ``--output_file`` (JSON) and the figure
next to it (same name, ``.png``); prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from hf_deq.deq_fields import estimator_fields, phantom_gradient_estimators
from hf_deq.diagnostics import alignment_sweep, plot_alignment_sweep
from hf_deq.hub import missing_local_model_dir
from hf_deq.training import saved_model_data
from hf_deq.training.flag_ranges import count_list
from hf_deq.training.flags import FlagParser, flag
from hf_deq.training.script import error_lines

#: the registered phantom gradients with a k and a lambda to sweep (upg, npg and any registered one)
PHANTOM_ESTIMATORS = tuple(
    name
    for name in phantom_gradient_estimators()
    if {"grad_steps", "grad_damping"} <= set(estimator_fields(name))
)
#: a reference solve above this residual is warned about: its "exact" gradient is not at a fixed point
REFERENCE_WARN_RESIDUAL = 1e-3


def _dampings(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in (0, 1], got {text!r}")
    return values


def _estimators(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(n not in PHANTOM_ESTIMATORS for n in names):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names from {list(PHANTOM_ESTIMATORS)}, got {text!r}"
        )
    return names


@dataclass(kw_only=True)
class SweepArguments:
    """The flags of this script (the model family's data flags pass through, after ``--``)."""

    model_name_or_path: str = flag(MISSING, "a saved hf_deq model (folder or Hub id)")
    at_init: bool = flag(False, "the same architecture (config) freshly initialised (--seed)")
    seed: int = flag(0, "initialisation seed of --at_init")
    estimators: list[str] = flag(list(PHANTOM_ESTIMATORS), "upg,npg", parse=_estimators)
    steps: list[int] = flag([1, 2, 4, 8, 16, 32], "the k values", parse=count_list)
    dampings: list[float] = flag([0.5, 0.8, 1.0], "the lambda values", parse=_dampings)
    mode: str = flag(
        "train",
        "model mode of the passes: train (the training budget, dropout as in training) or eval",
        choices=["train", "eval"],
    )
    reference_tol: float = flag(1e-8, "tolerance of the exact gradient")
    reference_max_iter: int = flag(100, "budget of the exact gradient")
    output_file: str = flag(MISSING, "the JSON; the PNG goes next to it")
    overwrite_output_file: bool = flag(False, "replace existing outputs")


def parse_args(argv: list[str] | None = None) -> tuple[SweepArguments, list[str]]:
    """``(arguments, passthrough)``: this script's checked arguments and the family training script's flags."""
    parser = FlagParser(SweepArguments, description=__doc__)
    args, passthrough = parser.parse_into_dataclasses(argv, remaining=True)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    if problem := missing_local_model_dir(args.model_name_or_path):
        parser.error(f"argument --model_name_or_path: {problem}")
    if not (args.reference_tol > 0 and math.isfinite(args.reference_tol)):
        parser.error(f"argument --reference_tol: expected a number > 0, got {args.reference_tol!r}")
    if args.reference_max_iter < 1:
        parser.error(
            f"argument --reference_max_iter: expected an integer >= 1, got {args.reference_max_iter}"
        )
    output = Path(args.output_file)
    if output.suffix != ".json":
        parser.error(f"argument --output_file: expected a .json file name, got {args.output_file!r}")
    for path in (output, output.with_suffix(".png")):
        if path.exists() and not args.overwrite_output_file:
            parser.error(f"argument --output_file: {path} exists; pass --overwrite_output_file to replace it")
    return args, passthrough


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run_sweep(argv: list[str] | None = None) -> dict[str, Any]:
    args, passthrough = parse_args(argv)
    accelerator = Accelerator()
    saved = saved_model_data.load_saved_evaluation(
        args.model_name_or_path, passthrough, accelerator, Path(__file__).name
    )
    model = saved.model
    if args.at_init:
        torch.manual_seed(args.seed)
        model = type(model)(model.config)
    model.to(accelerator.device)
    model.train(args.mode == "train")
    batch = dict(next(iter(saved.eval_dataloader)))
    points, residual = alignment_sweep(
        model,
        batch,
        estimators=tuple(args.estimators),
        steps=tuple(args.steps),
        dampings=tuple(args.dampings),
        reference_tol=args.reference_tol,
        reference_max_iter=args.reference_max_iter,
    )
    state = "at initialisation" if args.at_init else "trained"
    config = model.config
    summary = {
        "model_name_or_path": args.model_name_or_path,
        "model_type": config.model_type,
        "at_init": args.at_init,
        "mode": args.mode,
        "batch_size": int(next(iter(batch.values())).shape[0]),
        "forward_solver": f"{config.solver} {config.solver_max_iter if args.mode == 'train' else config.solver_eval_max_iter}",
        "reference_tol": args.reference_tol,
        "reference_residual": _finite_or_none(residual),
        "points": [
            {
                "estimator": p.estimator,
                "steps": p.steps,
                "damping": p.damping,
                "cosine": _finite_or_none(p.cosine),
                "relative_error": _finite_or_none(p.relative_error),
            }
            for p in points
        ],
    }
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    title = (
        f"{config.model_type} {state} ({args.mode} mode, {summary['forward_solver']} forward; "
        f"reference residual {residual:.1e})"
    )
    if not residual <= REFERENCE_WARN_RESIDUAL:
        print(
            f"warning: the reference solve reached residual {residual:.2e} only (--reference_tol "
            f"{args.reference_tol:g}, --reference_max_iter {args.reference_max_iter}): the 'exact' gradient is "
            "not exact there (no fixed point found); raise --reference_max_iter or read the cosines as relative "
            "to that approximation",
            file=sys.stderr,
        )
    plot_alignment_sweep(points, str(output.with_suffix(".png")), title)
    lines = ["| estimator | k | λ | cosine | relative error |", "|---|---|---|---|---|"]
    lines += [
        f"| {p.estimator} | {p.steps} | {p.damping:g} | {p.cosine:.4f} | {p.relative_error:.3g} |"
        for p in points
    ]
    print("\n".join(lines))
    print(f"reference residual {residual:.2e}; wrote {output} and {output.with_suffix('.png')}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with error_lines(Path(__file__).name):
        return run_sweep(argv)


if __name__ == "__main__":
    main()
