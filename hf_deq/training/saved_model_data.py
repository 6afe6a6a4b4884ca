"""A saved model and its own evaluation data, loaded through its family's task exactly as in training.

``load_saved_evaluation`` serves every script that looks at a saved model on its data (``evaluate_deq.py``,
``gradient_alignment_sweep.py``): the model's ``training_record.json`` supplies the data flags of its run (data,
split, block size, ...) as defaults, flags given by the caller override them and say so, and the task loads,
splits and batches the evaluation split as the training script did.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.errors import InputError
from ..hub import TRAINING_RECORD_FILE, read_training_record
from .arguments import parse_args as parse_training_args
from .evaluation import evaluate
from .loop import build_dataloaders
from .record import data_source_flags, evaluation_data_flags
from .script import fail
from .task import TrainingTask, get_task

if TYPE_CHECKING:
    from .arguments import TrainingArgs


def _flag_text(name: str, value: Any) -> str:
    return f"--{name} {value}"


def recorded_data_flags(
    model_name_or_path: str, task: TrainingTask, passthrough: list[str], script: str
) -> tuple[dict[str, Any], list[str]]:
    """``(defaults, messages)``: the evaluation data flags of the model's training record, less the recorded data
    sources when ``passthrough`` names other data, and what to tell the user about them. A model without a
    record (saved otherwise, or a Hub id) gets no defaults and a warning. A recorded data path that no longer
    exists is one ``error:`` line of ``script`` (exit status 2)."""
    record = read_training_record(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    where = Path(model_name_or_path) / TRAINING_RECORD_FILE
    if record is None:
        return {}, [
            f"warning: {model_name_or_path} has no {TRAINING_RECORD_FILE} (it was not saved by an hf_deq training "
            "script, or by an older one): the evaluation data is what the flags given here and their defaults "
            "say, which need not be what the model was trained and evaluated with; pass the data flags of its "
            "training run (after --)"
        ]
    recorded = {name: record["args"][name] for name in evaluation_data_flags(task) if name in record["args"]}
    sources = data_source_flags(task)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in sources:
        pre.add_argument(f"--{name}", default=None)
    given, _ = pre.parse_known_args(passthrough)
    messages = []
    named = [n for n in sources if n != "dataset_config_name" and getattr(given, n) is not None]
    if named:
        replaced = [_flag_text(n, recorded[n]) for n in sources if recorded.get(n) is not None]
        if replaced:
            messages.append(
                f"note: {', '.join(_flag_text(n, getattr(given, n)) for n in named)} replaces the data of the "
                f"training run ({' '.join(replaced)}, from {where})"
            )
        recorded = {k: v for k, v in recorded.items() if k not in sources}
    for name in sources:
        value = recorded.get(name)
        if isinstance(value, str) and os.path.isabs(value) and not os.path.exists(value):
            fail(
                script,
                f"--{name} {value}, recorded in {where}, no longer exists: pass the data to evaluate on (after --, "
                f"e.g. --{name} PATH)",
            )
    used = " ".join(_flag_text(n, v) for n, v in recorded.items() if v is not None)
    messages.append(f"the training run's data flags ({where}): {used or 'none recorded'}")
    return recorded, messages


@dataclasses.dataclass
class SavedEvaluation:
    """A saved model with its evaluation data: ``eval_dataloader`` (prepared by the accelerator) yields batches
    that ``model(**batch)`` takes (labels included); ``run_eval(prepared_model)`` returns the metric with common
    names (``metric``, ``metric_name``, ``loss``, solver stats, ``num_examples``)."""

    model: Any
    task: TrainingTask
    args: TrainingArgs
    eval_dataloader: Any
    run_eval: Callable[[Any], dict[str, Any]]


def load_saved_evaluation(
    model_name_or_path: str, passthrough: list[str], accelerator: Any, script: str
) -> SavedEvaluation:
    """Load the saved model and its family's evaluation split: the data flags of its training record as
    defaults, ``passthrough`` (the family training script's flags) over them. ``script`` names the caller in
    messages."""
    import torch
    from transformers import AutoConfig

    from .. import tasks  # noqa: F401 (registers the families' tasks; the training layer names none)

    config = AutoConfig.from_pretrained(model_name_or_path)
    try:
        task = get_task(config.model_type)
    except ValueError:
        raise InputError(
            "model_name_or_path",
            model_name_or_path,
            f"model_type {config.model_type!r} is not an hf_deq model",
        ) from None
    recorded, messages = recorded_data_flags(model_name_or_path, task, passthrough, script)
    family_argv = [*passthrough, "--model_name_or_path", model_name_or_path]
    train_args = parse_training_args(task, family_argv, script=f"{script} --", defaults=recorded)
    for name, value in recorded.items():
        if getattr(train_args, name) != value:
            messages.append(
                f"note: {_flag_text(name, getattr(train_args, name))} overrides the training run's "
                f"{_flag_text(name, value)}"
            )
    if accelerator.is_main_process:
        for message in messages:
            print(message, file=sys.stderr)
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

    return SavedEvaluation(model, task, train_args, eval_dl, run_eval)


__all__ = ["SavedEvaluation", "load_saved_evaluation", "recorded_data_flags"]
