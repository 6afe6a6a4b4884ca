"""The training state: where a run is (step, epoch, batch in epoch) and what it has counted (losses, timings,
skipped steps, the evaluation history). It travels in every checkpoint as ``trainer_state.json``, the one resume
contract of every task."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .checkpoints import STATE_FILE, save_checkpoint_atomically


@dataclass
class TrainingState:
    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    train_time: float = 0.0
    train_cpu_time: float = 0.0  # CPU seconds of this process in training (time.process_time)
    forward_time: float = 0.0
    backward_time: float = 0.0
    timed_steps: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    skipped_nonfinite_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        known = {f.name for f in fields(cls)}
        missing = {"completed_steps", "epoch", "batches_in_epoch"} - set(data)
        if missing:
            raise ValueError(f"{STATE_FILE} lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, accelerator, output_dir: str | os.PathLike, name: str, write_files=None) -> Path:
        """``accelerator.save_state`` plus this state, atomically, as ``<output_dir>/<name>``."""
        return save_checkpoint_atomically(accelerator, output_dir, name, self.to_dict(), write_files)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, accelerator=None) -> TrainingState:
        """The state saved in ``checkpoint`` (with ``accelerator``: the model, optimizer, scheduler, RNG states
        too)."""
        state = cls.from_dict(json.loads((Path(checkpoint) / STATE_FILE).read_text()))
        if accelerator is not None:
            accelerator.load_state(str(checkpoint))
        return state

    @property
    def train_loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")


__all__ = ["TrainingState"]
