"""The training record: what a saved model's evaluation needs from its training run, written next to the model
(``hf_deq.hub.TRAINING_RECORD_FILE``) so that ``scripts/evaluate_deq.py`` evaluates on the data, split and block
size the model was trained and evaluated with, not on the flags' defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hub.model_dir import TRAINING_RECORD_FILE
from .task import TrainingTask

if TYPE_CHECKING:
    from .arguments import TrainingArgs

RECORD_FORMAT_VERSION = 1
#: the flags of every task that name its data (``--dataset_config_name`` goes with ``--dataset_name``)
SHARED_SOURCE_FLAGS = ("dataset_name", "dataset_config_name")
#: the flags of every task that shape its evaluation split
SHARED_EVALUATION_FLAGS = ("max_eval_samples",)


def data_source_flags(task: TrainingTask) -> tuple[str, ...]:
    """The flags that name ``task``'s data: ``--dataset_name``, ``--dataset_config_name`` and the task's own."""
    return (*SHARED_SOURCE_FLAGS, *task.data_source_flags)


def evaluation_data_flags(task: TrainingTask) -> tuple[str, ...]:
    """Every flag that decides ``task``'s evaluation examples: its data sources and what shapes the split."""
    return (*data_source_flags(task), *SHARED_EVALUATION_FLAGS, *task.evaluation_data_flags)


def training_record(task: TrainingTask, args: TrainingArgs) -> dict[str, Any]:
    """``{"format_version", "task", "args"}``: the run's JSON-able flags (secrets left out), each data source
    that names a local file or folder made absolute, so that it is found from any working directory (and is
    known to be local, not a Hub id)."""
    from ..hub.cli import training_info

    flags = training_info(args)
    for name in data_source_flags(task):
        value = flags.get(name)
        if isinstance(value, str) and value and os.path.exists(value):
            flags[name] = os.path.abspath(value)
    return {"format_version": RECORD_FORMAT_VERSION, "task": task.name, "args": flags}


def write_training_record(output_dir: str | os.PathLike, task: TrainingTask, args: TrainingArgs) -> Path:
    """Write ``training_record(task, args)`` into ``output_dir``; returns its path."""
    path = Path(output_dir, TRAINING_RECORD_FILE)
    path.write_text(json.dumps(training_record(task, args), indent=2, default=str) + "\n", encoding="utf-8")
    return path


__all__ = [
    "RECORD_FORMAT_VERSION",
    "data_source_flags",
    "evaluation_data_flags",
    "training_record",
    "write_training_record",
]
