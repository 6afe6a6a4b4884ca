"""What a model family plugs into the one training loop: a ``TrainingTask`` (its data flags and defaults, its
data, how its model and processing class are built, per-batch preparation, its per-example evaluation loss and
metric), registered by name with ``register_task`` and found with ``get_task``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from .arguments import TrainingArgs


class Examples(Protocol):
    """A dataset the loaders take: its length and its rows by index (a ``datasets.Dataset``, a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass
class TaskData:
    """A task's data for one run.

    Args:
        train / validation: the training and evaluation examples (rows the collator takes).
        collate_fn: the collator: a list of rows to one batch of tensors.
        dataset_name: what the run trained on (a Hub id, a built-in name or a local file/folder's base name).
        dataset_config_name: the dataset's configuration, if any.
        info: what else the task knows of its data (e.g. ``label_names``).
    """

    train: Examples
    validation: Examples
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    dataset_name: str
    dataset_config_name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class TrainingTask:
    """Base class of the tasks. Subclasses set the class attributes and implement ``load_data``,
    ``build_model`` and ``eval_step``; the rest has defaults."""

    #: registry name, e.g. ``"image-classification"``
    name: ClassVar[str] = ""
    #: ``model_type`` of the configs this task trains (presets of another family are refused)
    model_type: ClassVar[str] = ""
    #: tracker project name (TensorBoard writes into ``<output_dir>/<project_name>``)
    project_name: ClassVar[str] = "hf_deq"
    #: the task's metric: ``eval_<metric_name>`` in the results
    metric_name: ClassVar[str] = ""
    default_preset: ClassVar[str | None] = None
    dataset_help: ClassVar[str] = "a datasets Hub id"
    #: flag defaults of this task (the defaults of its arguments class)
    defaults: ClassVar[dict[str, Any]] = {}
    #: the dataclass of the task's own data flags (``hf_deq.training.flags.flag`` fields, a numeric one with its
    #: ``range=``), or ``None``
    arguments: ClassVar[type | None] = None
    #: keyword arguments of every training forward
    forward_kwargs: ClassVar[dict[str, Any]] = {}
    #: the task's flags that name its data besides ``--dataset_name`` (e.g. ``train_file``): recorded with the
    #: saved model; ``evaluate_deq.py`` given one of them takes none of the recorded ones (``training.record``)
    data_source_flags: ClassVar[tuple[str, ...]] = ()
    #: the task's flags that shape its evaluation split (validation share, block size, columns): recorded with
    #: the saved model, the defaults of ``evaluate_deq.py``
    evaluation_data_flags: ClassVar[tuple[str, ...]] = ()

    def check_args(self, args: Any) -> dict[str, Any]:
        """Checks of the task's flags in ``args`` that need no data: raises ``FlagError`` (or another
        ``InputError``) on a bad value; returns the values it resolves (applied with ``dataclasses.replace``),
        never modifying ``args``."""
        return {}

    def load_raw(self, args: TrainingArgs) -> Any:
        """The raw data (run on the main process first): what ``build_model`` and ``load_data`` start from."""
        raise NotImplementedError

    def build_model(self, args: TrainingArgs, raw: Any, checkpoint: Path | None) -> tuple[Any, Any]:
        """``(model, processing_class)``: from ``--preset`` or ``--model_name_or_path`` with every config
        override, fitted to the data (labels, vocabulary); ``checkpoint`` is the one being resumed, if any."""
        raise NotImplementedError

    def load_pretrained(self, args: TrainingArgs, raw: Any) -> tuple[Any, Any]:
        """``(model, processing_class)`` exactly as saved in ``--model_name_or_path`` (for evaluation), refusing
        a model that does not fit the data."""
        raise NotImplementedError

    def load_data(self, args: TrainingArgs, raw: Any, processing_class: Any) -> TaskData:
        """The datasets the loop trains and evaluates on (run on the main process first)."""
        raise NotImplementedError

    def prepare_train_batch(self, batch: dict, args: TrainingArgs) -> dict:
        """Per-batch preparation before the training forward (e.g. augmentation); drawn from the per-step
        seeded global RNG."""
        return batch

    def training_forward(self, model, batch: dict):
        return model(**batch, **self.forward_kwargs)

    def model_is_deq(self, model: torch.nn.Module) -> bool:
        """Whether ``model`` (one ``build_model`` made) is a DEQ, by its config class: a ``DEQConfig`` has the
        solver, gradient-estimator and Jacobian-regularisation fields the loop logs and schedules; an explicit
        baseline's config has none."""
        from ..configuration_deq import DEQConfig

        return isinstance(model.config, DEQConfig)

    def batch_items(self, batch: dict) -> int:
        """What one training batch counts for the throughput (``TrainingClock.items_per_second``): by default
        its examples (the first dimension of its first tensor)."""
        tensor = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        return int(tensor.shape[0]) if tensor is not None and tensor.dim() else 0

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per-example tensors of one evaluation batch: ``loss_sum`` (summed loss of each example),
        ``num_items`` (what it is summed over), ``solver_nstep``, ``solver_residual``, and what
        ``compute_metrics`` needs."""
        raise NotImplementedError

    def compute_metrics(self, values: dict[str, torch.Tensor], eval_loss: float) -> dict[str, float]:
        """``{metric_name: value}`` from the gathered per-example values of the whole split."""
        raise NotImplementedError


_TASKS: dict[str, type[TrainingTask]] = {}


def register_task(task_class: type[TrainingTask]) -> type[TrainingTask]:
    """Register ``task_class`` under its ``name`` (usable as a class decorator)."""
    if not task_class.name:
        raise ValueError(f"{task_class.__name__}.name is empty")
    if _TASKS.get(task_class.name, task_class) is not task_class:
        raise ValueError(f"a training task named {task_class.name!r} is already registered")
    _TASKS[task_class.name] = task_class
    return task_class


def available_tasks() -> list[str]:
    """The registered task names, sorted (``image-classification``, ``causal-lm``, and any registered later)."""
    return sorted(_TASKS)


def get_task(name: str) -> TrainingTask:
    """A new instance of the task registered as ``name``, or of the one training ``model_type == name``."""
    if name not in _TASKS:
        by_type = [cls for cls in _TASKS.values() if cls.model_type == name]
        if by_type:
            return by_type[0]()
        raise ValueError(f"unknown training task {name!r}; available: {available_tasks()}")
    return _TASKS[name]()


__all__ = ["Examples", "TaskData", "TrainingTask", "available_tasks", "get_task", "register_task"]
