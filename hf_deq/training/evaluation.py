"""Evaluation with fixed keys: each example of the split counted exactly once across processes (per-example
values gathered with ``gather_for_metrics``, which drops the copies that pad the last round), the task's
metric, and the solver statistics."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .task import TrainingTask

#: the keys ``evaluate`` returns for every task, besides ``eval_<task.metric_name>``
EVAL_KEYS = (
    "eval_loss",
    "eval_num_examples",
    "eval_solver_nstep",
    "eval_solver_nstep_max",
    "eval_solver_residual",
)


def solver_stats(outputs) -> dict[str, float]:
    """Mean/max solver steps and mean finite residual of ``outputs``, a DEQ output (or anything with ``solver_nstep`` and
    ``solver_residual``). An output without them (an explicit model: no solver) gets NaN for each."""
    nstep = getattr(outputs, "solver_nstep", None)
    residual = getattr(outputs, "solver_residual", None)
    if nstep is None or residual is None:
        return dict.fromkeys(("solver_nstep", "solver_nstep_max", "solver_residual"), math.nan)
    nstep, residual = nstep.float(), residual.float()
    finite = residual[torch.isfinite(residual)]
    return {
        "solver_nstep": float(nstep.mean()),
        "solver_nstep_max": float(nstep.max()),
        "solver_residual": float(finite.mean()) if finite.numel() else math.inf,
    }


def epoch_evaluation_due(
    epoch: int, last_epoch: bool, eval_every_epochs: int | None, eval_steps: int | None
) -> bool:
    """Whether the loop evaluates at the end of ``epoch`` (0-based): always after the last one; else every
    ``eval_every_epochs`` epochs, which defaults to 1 without ``eval_steps`` and to never with it (an epoch's
    end falls anywhere between two ``--eval_steps`` evaluations: one more there would evaluate twice in a row)."""
    if last_epoch:
        return True
    if eval_every_epochs is None:
        eval_every_epochs = None if eval_steps else 1
    return eval_every_epochs is not None and (epoch + 1) % eval_every_epochs == 0


@torch.no_grad()
def evaluate(
    model, dataloader, accelerator, task: TrainingTask, on_batch: Callable[[], None] | None = None
) -> dict[str, Any]:
    """``EVAL_KEYS`` and ``eval_<metric>``: ``eval_loss`` is the sum of the per-example losses over the sum of
    their item counts (tokens for a language model, 1 per image), so it is exact whatever the batching. A task
    whose ``eval_step`` returns no solver statistics (an explicit model) gets NaN for them. ``on_batch`` is called
    after each batch (a progress bar). ``dataloader``: the prepared evaluation batches; ``accelerator`` gathers
    the per-example values of every process."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in dataloader:
        per_example = task.eval_step(model, batch)
        gathered = accelerator.gather_for_metrics({k: v.detach() for k, v in per_example.items()})
        for key, value in gathered.items():
            parts.setdefault(key, []).append(value.cpu())
        if on_batch is not None:
            on_batch()
    model.train()
    values = {k: torch.cat(v) for k, v in parts.items()}
    loss = float(values["loss_sum"].double().sum() / values["num_items"].double().sum())
    stats = solver_stats(
        SimpleNamespace(
            solver_nstep=values.get("solver_nstep"), solver_residual=values.get("solver_residual")
        )
    )
    results = {
        "eval_loss": loss,
        "eval_num_examples": int(values["loss_sum"].numel()),
        **{f"eval_{k}": v for k, v in stats.items()},
    }
    results.update({f"eval_{k}": v for k, v in task.compute_metrics(values, loss).items()})
    return results


def packaged_metric_path(name: str) -> str:
    """Path of the ``evaluate`` metric module ``name`` shipped in ``hf_deq/metrics`` (e.g. ``"accuracy"``)."""
    path = Path(__file__).resolve().parents[1] / "metrics" / f"{name}.py"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
        raise ValueError(f"no packaged metric {name!r}; available: {available}")
    return str(path)


def load_packaged_metric(name: str, **kwargs: Any):
    """``evaluate.load`` of a packaged metric by path: works offline (``evaluate.load("accuracy")`` fetches the
    module from the Hub); ``name`` as in ``packaged_metric_path``. In multi-process runs call it under
    ``accelerator.main_process_first()``."""
    import evaluate

    return evaluate.load(packaged_metric_path(name), **kwargs)


__all__ = [
    "EVAL_KEYS",
    "epoch_evaluation_due",
    "evaluate",
    "load_packaged_metric",
    "packaged_metric_path",
    "solver_stats",
]
