#!/usr/bin/env python
"""Evaluate a saved DEQ model (MDEQ classifier or DEQ-Transformer LM) on its validation data, optionally over a
sweep of forward solvers and solver budgets: a DEQ's accuracy depends on how well its fixed point is solved, and
the budget can be changed after training without touching the weights.

    # the README main job's model, at the budget it was saved with
    python scripts/evaluate_deq.py --model_name_or_path outputs/mdeq-tiny-digits

    # accuracy, solver steps and residual for two solvers and five budgets
    python scripts/evaluate_deq.py --model_name_or_path outputs/mdeq-tiny-digits \\
        --solvers broyden,anderson --budgets 2,4,8,16,32 --output_file outputs/budget-sweep.json

    # a language model on the text, split and block size it was trained with (from its training record)
    python scripts/evaluate_deq.py --model_name_or_path runs/ts --budgets 4,12,30

    # the same model on another text, in blocks of 256 characters
    python scripts/evaluate_deq.py --model_name_or_path runs/ts -- --train_file other.txt --block_size 256

The data flags after ``--`` (or any flag this script does not know) are those of the model family's training
script (``train_mdeq_classifier.py`` / ``train_deq_lm.py``): its task (``hf_deq.tasks``) loads and splits the
data exactly as in training. A model saved by a training script carries the data flags of its run
(``training_record.json``: the data, ``--validation_split_percentage`` / ``--train_val_split``,
``--block_size``, ``--max_eval_samples``, ...), and they are the defaults here, so the evaluation split is the
one training evaluated on; a flag given here overrides its recorded value and says so, and a flag naming other
data (``--dataset_name``, ``--train_file``, ...) replaces the recorded data. The tokenizer or image processor
is the one saved with the model. A model without a record is evaluated with the flags given (and their
defaults), with a warning. Runs under ``accelerate launch`` too (the split is sharded and gathered, each example
counted once). Prints a table and, with ``--output_file``, writes the rows as JSON and a plot of the metric and
the time per example against the budget (``--plot_file``, by default beside ``--output_file`` as .png; needs
matplotlib). ``--save_to_model_dir`` saves the sweep with a local model (``budget_sweep.json`` and
``budget_sweep.png``), where its model card shows them (``scripts/push_to_hub.py`` uploads both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, dataclass, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from hf_deq.deq import available_solvers
from hf_deq.hub import missing_local_model_dir
from hf_deq.hub.budget_sweep import (
    BUDGET_SWEEP_FILE,
    BUDGET_SWEEP_PLOT,
    metric_text,
    plot_budget_sweep,
    write_budget_sweep,
)
from hf_deq.training import FlagParser, saved_model_data
from hf_deq.training.flag_ranges import count_list
from hf_deq.training.flags import flag
from hf_deq.training.script import error_lines


def _solver_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    allowed = [s for s in available_solvers() if s != "gmres"]
    for name in names:
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"unknown forward solver {name!r}; choose from {allowed}")
    return names


@dataclass
class EvaluateArguments:
    """The flags of this script (the model family's data flags pass through, after ``--``)."""

    model_name_or_path: str = flag(MISSING, "a saved hf_deq model (folder or Hub id)")
    solvers: list[str] | None = flag(
        None, "comma-separated forward solvers (default: the model's)", parse=_solver_list
    )
    budgets: list[int] | None = flag(
        None, "comma-separated solver_eval_max_iter values (default: the model's)", parse=count_list
    )
    mixed_precision: str | None = flag(
        None,
        "autocast of the evaluation (default: Accelerate's, i.e. none on CPU)",
        choices=["no", "fp16", "bf16"],
    )
    output_file: str | None = flag(None, "write the rows as JSON (never over a model file)")
    plot_file: str | None = flag(
        None,
        "write a PNG of the metric and the time per example against the budget (default: beside "
        "--output_file, as .png)",
    )
    save_to_model_dir: bool = flag(
        False,
        f"save the sweep with the (local) model: {BUDGET_SWEEP_FILE} and {BUDGET_SWEEP_PLOT}, shown by its "
        "model card",
    )
    overwrite_output_file: bool = flag(
        False, "replace an existing --output_file, --plot_file or the model's saved sweep"
    )


def build_parser() -> FlagParser:
    """The script's ``FlagParser``."""
    return FlagParser(EvaluateArguments, description=__doc__)


def check_outputs(parser: FlagParser, args: EvaluateArguments) -> None:
    """The files the sweep writes: never over a model file, an existing one only with
    ``--overwrite_output_file``; ``--save_to_model_dir`` needs a local model folder."""
    for name, value in (("output_file", args.output_file), ("plot_file", args.plot_file)):
        if value is None:
            continue
        if Path(value).name in ("config.json", "model.safetensors"):
            parser.error(f"--{name} {value} would overwrite a model file; choose another name")
        if Path(value).exists() and not args.overwrite_output_file:
            parser.error(f"--{name} {value} exists; pass --overwrite_output_file to replace it")
    if args.save_to_model_dir:
        model_dir = Path(args.model_name_or_path)
        if not model_dir.is_dir():
            parser.error(
                f"--save_to_model_dir needs a local model folder; {args.model_name_or_path} is not one (use "
                "--output_file)"
            )
        for name in (BUDGET_SWEEP_FILE, BUDGET_SWEEP_PLOT):
            if (model_dir / name).exists() and not args.overwrite_output_file:
                parser.error(
                    f"--save_to_model_dir: {model_dir / name} exists (an earlier sweep); pass "
                    "--overwrite_output_file to replace it"
                )


def parse_args(argv: list[str] | None = None) -> tuple[EvaluateArguments, list[str]]:
    """``(arguments, passthrough)``: this script's checked arguments (``--plot_file`` resolved) and the family
    training script's flags."""
    parser = build_parser()
    args, passthrough = parser.parse_into_dataclasses(argv, remaining=True)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    if problem := missing_local_model_dir(args.model_name_or_path):
        parser.error(f"argument --model_name_or_path: {problem}")
    if args.plot_file is None and args.output_file is not None:
        args = replace(args, plot_file=str(Path(args.output_file).with_suffix(".png")))
    check_outputs(parser, args)
    return args, passthrough


def recorded_data_flags(
    model_name_or_path: str, task, passthrough: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """``(defaults, messages)``: the evaluation data flags of the model's training record
    (``hf_deq.training.saved_model_data.recorded_data_flags``)."""
    return saved_model_data.recorded_data_flags(model_name_or_path, task, passthrough, Path(__file__).name)


def build_evaluation(args: EvaluateArguments, passthrough: list[str], accelerator: Accelerator):
    """``(model, run_eval)``: the saved model, and its family's evaluation of the data the flags name;
    ``run_eval(prepared_model)`` returns the metric with common names (``metric``, ``metric_name``, ``loss``,
    solver stats, ``num_examples``)."""
    saved = saved_model_data.load_saved_evaluation(
        args.model_name_or_path, passthrough, accelerator, Path(__file__).name
    )
    return saved.model, saved.run_eval


def evaluate_sweep(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """One evaluation per (solver, budget); returns the rows of the table."""
    args, passthrough = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model, run_eval = build_evaluation(args, passthrough, accelerator)
    model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    saved = unwrapped.config
    solvers = args.solvers or [saved.solver]
    budgets = args.budgets or [saved.solver_eval_max_iter or saved.solver_max_iter]
    own_kwargs = dict(saved.solver_kwargs or {})
    rows = []
    for solver in solvers:
        for budget in budgets:
            # The model's own solver keeps its hyperparameters; another one gets its defaults. Non-convergence
            # is what the residual column reports, so it is not warned about here.
            kwargs = own_kwargs if solver == saved.solver else {}
            unwrapped.set_solver(solver, solver_eval_max_iter=budget, solver_on_failure="ignore", **kwargs)
            start = time.perf_counter()
            result = run_eval(model)
            seconds = time.perf_counter() - start
            rows.append({"solver": solver, "budget": budget, **result, "seconds": seconds})
    if accelerator.is_main_process:
        print(format_table(rows))
        if args.output_file is not None:
            Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output_file).write_text(json.dumps(rows, indent=2) + "\n")
        plots = [Path(args.plot_file)] if args.plot_file is not None else []
        if args.save_to_model_dir:
            write_budget_sweep(args.model_name_or_path, rows, device=describe_device(accelerator))
            plots.append(Path(args.model_name_or_path) / BUDGET_SWEEP_PLOT)
        for plot in plots:
            plot.parent.mkdir(parents=True, exist_ok=True)
            if not plot_budget_sweep(rows, plot):
                print(f"note: matplotlib is not installed, so no plot was written ({plot})", file=sys.stderr)
                break
    return rows


def describe_device(accelerator: Accelerator) -> str:
    """What the sweep was timed on: the accelerator's name, or the CPU with its thread count."""
    import torch

    if accelerator.device.type == "cuda":
        return f"{torch.cuda.get_device_name(accelerator.device)} x {accelerator.num_processes}"
    threads, processes = torch.get_num_threads(), accelerator.num_processes
    return f"{accelerator.device.type}, {threads} thread(s) x {processes} process(es)"


def format_table(rows: list[dict[str, Any]]) -> str:
    name = rows[0]["metric_name"]
    lines = [
        f"| solver | eval budget | {name} | loss | mean solver steps | mean residual | examples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = metric_text(name, r["metric"])
        lines.append(
            f"| {r['solver']} | {r['budget']} | {value} | {r['loss']:.4f} | {r['solver_nstep']:.1f} | "
            f"{r['solver_residual']:.2e} | {r['num_examples'] / max(r['seconds'], 1e-9):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    with error_lines(Path(__file__).name):  # a data input the run cannot use: one error: line
        return evaluate_sweep(argv)


if __name__ == "__main__":
    main()
