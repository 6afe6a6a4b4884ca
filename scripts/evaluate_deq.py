#!/usr/bin/env python
"""Evaluate a saved DEQ model (MDEQ classifier or DEQ-Transformer LM) on its validation data, optionally over a
sweep of forward solvers and solver budgets: a DEQ's accuracy depends on how well its fixed point is solved, and
the budget can be changed after training without touching the weights.

    # the README main job's model, at the budget it was saved with
    python scripts/evaluate_deq.py --model_name_or_path outputs/mdeq-tiny-digits

    # accuracy, solver steps and residual for two solvers and five budgets
    python scripts/evaluate_deq.py --model_name_or_path outputs/mdeq-tiny-digits \\
        --solvers broyden,anderson --budgets 2,4,8,16,32 --output_file outputs/budget-sweep.json

    # a language model on its validation text (data flags are the training script's)
    python scripts/evaluate_deq.py --model_name_or_path runs/ts --budgets 4,12,30 \\
        -- --train_file ../shared/data/tinyshakespeare/input.txt --block_size 64

The data flags after ``--`` (or any flag this script does not know) are those of the model family's training
script (``train_mdeq_classifier.py`` / ``train_deq_lm.py``): its task (``hf_deq.tasks``) loads and splits the
data exactly as in training:
the same ``--dataset_name`` (default: the built-in data), ``--max_eval_samples``, ``--per_device_eval_batch_size``,
``--block_size``, ... The evaluation split is the one training evaluated on. Runs under ``accelerate launch``
too (the split is sharded and gathered, each example counted once). Prints a table and, with ``--output_file``,
writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import AutoConfig

from hf_deq.deq import available_solvers
from hf_deq.hub import missing_local_model_dir
from hf_deq.tasks import get_task
from hf_deq.training import build_dataloaders, evaluate
from hf_deq.training import parse_args as parse_training_args
from hf_deq.training.script import error_lines


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _solver_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    allowed = [s for s in available_solvers() if s != "gmres"]
    for name in names:
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"unknown forward solver {name!r}; choose from {allowed}")
    return names


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_name_or_path", required=True, help="a saved hf_deq model (folder or Hub id)")
    parser.add_argument(
        "--solvers",
        type=_solver_list,
        default=None,
        help="comma-separated forward solvers (default: the model's)",
    )
    parser.add_argument(
        "--budgets",
        type=_int_list,
        default=None,
        help="comma-separated solver_eval_max_iter values (default: the model's)",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="autocast of the evaluation (default: Accelerate's, i.e. none on CPU)",
    )
    parser.add_argument(
        "--output_file", default=None, help="write the rows as JSON (never over a model file)"
    )
    parser.add_argument(
        "--overwrite_output_file", action="store_true", help="replace an existing --output_file"
    )
    args, passthrough = parser.parse_known_args(argv)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    if problem := missing_local_model_dir(args.model_name_or_path):
        parser.error(f"argument --model_name_or_path: {problem}")
    if args.output_file is not None:
        if Path(args.output_file).name in ("config.json", "model.safetensors"):
            parser.error(
                f"--output_file {args.output_file} would overwrite a model file; choose another name"
            )
        if Path(args.output_file).exists() and not args.overwrite_output_file:
            parser.error(
                f"--output_file {args.output_file} exists; pass --overwrite_output_file to replace it"
            )
    return args, passthrough


def build_evaluation(args: argparse.Namespace, passthrough: list[str], accelerator: Accelerator):
    """``(model, run_eval)``: the saved model, and its family's evaluation of the data the flags name;
    ``run_eval(prepared_model)`` returns the metric with common names (``metric``, ``metric_name``, ``loss``,
    solver stats, ``num_examples``)."""
    import torch

    config = AutoConfig.from_pretrained(args.model_name_or_path)
    try:
        task = get_task(config.model_type)
    except ValueError:
        raise SystemExit(f"model_type {config.model_type!r} is not an hf_deq model") from None
    family_argv = [*passthrough, "--model_name_or_path", args.model_name_or_path]
    train_args = parse_training_args(task, family_argv, script=f"{Path(__file__).name} --")
    if train_args.torch_num_threads:
        torch.set_num_threads(train_args.torch_num_threads)
    with accelerator.main_process_first():
        raw = task.load_raw(train_args)
    model, processing_class = task.load_pretrained(train_args, raw)
    with accelerator.main_process_first():
        data = task.load_data(train_args, raw, processing_class)
    _, eval_dl = build_dataloaders(train_args, data)
    eval_dl = accelerator.prepare(eval_dl)

    def run_eval(prepared) -> dict[str, Any]:
        out = evaluate(prepared, eval_dl, accelerator, task)
        return {
            "metric_name": task.metric_name,
            "metric": out[f"eval_{task.metric_name}"],
            "loss": out["eval_loss"],
            "solver_nstep": out["eval_solver_nstep"],
            "solver_residual": out["eval_solver_residual"],
            "num_examples": out["eval_num_examples"],
        }

    return model, run_eval


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
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    name = rows[0]["metric_name"]
    lines = [
        f"| solver | eval budget | {name} | loss | mean solver steps | mean residual | examples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{100 * r['metric']:.2f}%" if name == "accuracy" else f"{r['metric']:.3f}"
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
