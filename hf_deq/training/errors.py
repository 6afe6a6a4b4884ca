"""The errors that stop a run after its flags were accepted: a training script answers each with one ``error:``
line and its ``exit_status``, never a traceback."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on, or cannot be right: its message is one line that says why and what was kept."""

    exit_status = 1


class OutputDirError(TrainingError):
    """``--output_dir`` cannot be used: not writable, or in use by another run."""

    exit_status = 2


class DivergenceError(TrainingError):
    """``--max_nonfinite_steps`` steps in a row were refused (non-finite loss, gradient or updated weights)."""


class NonFiniteWeightsError(TrainingError):
    """A model with NaN/inf weights or buffers would be saved."""


class CheckpointSaveError(TrainingError):
    """A checkpoint or the final model could not be written (a full disk); the previous checkpoint is kept."""


__all__ = [
    "CheckpointSaveError",
    "DivergenceError",
    "NonFiniteWeightsError",
    "OutputDirError",
    "TrainingError",
]
