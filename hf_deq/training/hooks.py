"""What a script adds to the loop without the loop knowing it: ``TrainingHook`` (called after each checkpoint and
at the end of the run, no-ops by default) and ``HubPushHook`` (``--push_to_hub``, the training scripts' hook)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import Run


class TrainingHook:
    """Base class of the loop's hooks: each method is called on every process, and does nothing by default."""

    def on_checkpoint(self, run: Run, path: Path, step: int) -> None:
        """After the checkpoint ``path`` was saved, at optimizer step ``step``; ``run`` is the loop's state."""

    def on_end(self, run: Run, output_dir: str | os.PathLike | None, results: dict[str, Any]) -> None:
        """After the final model and ``results`` (``all_results.json``) were saved into ``output_dir`` (``None``:
        nothing saved)."""


class HubPushHook(TrainingHook):
    """``--push_to_hub`` of the training scripts (``hf_deq.hub.cli.push_from_args``, main process only): with
    ``--hub_strategy checkpoint`` each checkpoint's model from memory (a failed push warns, training goes on), and
    at the end the saved ``output_dir`` with the results on its card (a failed push raises ``HubPushError``)."""

    def on_checkpoint(self, run: Run, path: Path, step: int) -> None:
        """Push the model at ``step`` (only with ``--hub_strategy checkpoint``)."""
        from ..hub.cli import push_from_args

        if run.accelerator.is_main_process:
            push_from_args(run.args, model=run.unwrapped, processing_class=run.processing_class, step=step)

    def on_end(self, run: Run, output_dir: str | os.PathLike | None, results: dict[str, Any]) -> None:
        """Push ``output_dir`` (the final model) with ``results``."""
        from ..hub.cli import push_from_args

        if run.accelerator.is_main_process:
            push_from_args(
                run.args,
                output_dir,
                model=run.unwrapped,
                processing_class=run.processing_class,
                metrics=results,
            )


__all__ = ["HubPushHook", "TrainingHook"]
