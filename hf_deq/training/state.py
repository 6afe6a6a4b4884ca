"""The training state: where a run is (step, epoch, batch in epoch) and what it has counted (losses, timings,
skipped steps, the evaluation history, the training log history). It travels in every checkpoint as ``trainer_state.json``, the one resume
contract of every task."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .checkpoints import STATE_FILE, save_checkpoint_atomically
from .errors import TrainingError


class TrainingStateError(TrainingError, ValueError):
    """A ``trainer_state.json`` that is not what this loop writes (not JSON, a key missing, a value of the wrong
    type or range, a position this run cannot have); the message names the file, the key and the value."""

    exit_status = 2


#: the keys a checkpoint must hold: its position
POSITION_KEYS = ("completed_steps", "epoch", "batches_in_epoch")


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
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    #: one entry per ``--logging_steps`` window and per ``--probe_steps`` probe (``train_loss``, solver statistics,
    #: gradient alignment); older checkpoints without it resume with an empty one
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = STATE_FILE) -> TrainingState:
        """The state in ``data`` (read from ``source``), each value checked: counts are integers >= 0, sums and
        times finite numbers >= 0, ``history`` and ``log_history`` lists of objects; unknown keys are ignored, missing
        ones (but the position) keep their defaults."""
        if not isinstance(data, dict):
            raise TrainingStateError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in POSITION_KEYS if k not in data]
        if missing:
            raise TrainingStateError(f"{source} lacks {sorted(missing)}")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("history", "log_history"):
                ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
                allowed = "a list of objects"
            elif f.type in ("int", int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                allowed = "an integer >= 0"
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                ok = ok and value >= 0
                allowed = "a finite number >= 0"
            if not ok:
                raise TrainingStateError(f"{source}: {f.name}={value!r} is not {allowed}")
            values[f.name] = value
        return cls(**values)

    @classmethod
    def read(cls, checkpoint: str | os.PathLike) -> TrainingState:
        """The state in ``<checkpoint>/trainer_state.json``, checked (``TrainingStateError`` naming the file, the
        key and the value)."""
        path = Path(checkpoint) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TrainingStateError(f"{path}: not a readable JSON file ({err})") from None
        return cls.from_dict(data, str(path))

    def check_position(self, source: str, updates_per_epoch: int, batches_per_epoch: int, accumulation: int):
        """Raise ``TrainingStateError`` when the position cannot be one of this run: more batches in the epoch
        than it has, or more steps than ``epoch`` epochs of ``updates_per_epoch`` updates and ``batches_in_epoch``
        more batches give (an edited file, or a checkpoint of another batch size or data: the loop would skip
        training it never did). Fewer steps are possible: an epoch cut short by ``--max_train_steps``."""
        if self.batches_in_epoch > batches_per_epoch:
            raise TrainingStateError(
                f"{source}: batches_in_epoch={self.batches_in_epoch}, but an epoch of this run has "
                f"{batches_per_epoch} batches"
            )
        most = self.epoch * updates_per_epoch + math.ceil(self.batches_in_epoch / accumulation)
        if self.completed_steps > most:
            raise TrainingStateError(
                f"{source}: completed_steps={self.completed_steps}, but epoch={self.epoch} and "
                f"batches_in_epoch={self.batches_in_epoch} of this run ({updates_per_epoch} optimizer steps per "
                f"epoch) make at most {most}; was it written with another batch size or data?"
            )

    def save(self, accelerator, output_dir: str | os.PathLike, name: str, write_files=None) -> Path:
        """``accelerator.save_state`` plus this state, atomically, as ``<output_dir>/<name>``."""
        return save_checkpoint_atomically(accelerator, output_dir, name, self.to_dict(), write_files)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, accelerator=None) -> TrainingState:
        """The state saved in ``checkpoint`` (with ``accelerator``: the model, optimizer, scheduler, RNG states
        too)."""
        state = cls.read(checkpoint)
        if accelerator is not None:
            accelerator.load_state(str(checkpoint))
        return state

    def add_micro_batch(self, forward_time: float, backward_time: float, loss: float | None) -> None:
        """Count one training micro-batch: its ``forward_time`` and ``backward_time`` (seconds) and, unless it was
        skipped (``loss=None``), its training ``loss`` (the run's running means, kept as sums to resume them)."""
        self.batches_in_epoch += 1
        self.forward_time += forward_time
        self.backward_time += backward_time
        self.timed_steps += 1
        if loss is not None:
            self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1

    @property
    def train_loss(self) -> float:
        """The mean training loss of the run (NaN before any counted micro-batch)."""
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")

    @property
    def forward_time_per_step(self) -> float:
        """Mean forward seconds per micro-batch (0 before any)."""
        return self.forward_time / max(self.timed_steps, 1)

    @property
    def backward_time_per_step(self) -> float:
        """Mean backward seconds per micro-batch (0 before any)."""
        return self.backward_time / max(self.timed_steps, 1)


__all__ = ["POSITION_KEYS", "TrainingState", "TrainingStateError"]
