"""The errors of a training run: ``FlagError`` (a flag value the checks refuse, an ``InputError`` naming the flag,
the value and what is allowed) and the errors that stop a run after its flags were accepted. A training script
answers each with one ``error:`` line and its exit status, never a traceback."""

from __future__ import annotations

from typing import Any

from ..data.errors import InputError


class FlagError(InputError):
    """A flag value that the checks refuse: ``argument`` is the flag's name (``--<argument>``), ``value`` its
    value, ``problem`` what is wrong and what the flag allows."""

    def __init__(self, argument: str, value: Any, problem: str) -> None:
        super().__init__(argument.removeprefix("--"), value, problem)


class TrainingError(RuntimeError):
    """A run that cannot go on, or cannot be right: its message is one line that says why and what was kept."""

    exit_status = 1


class OutputDirError(TrainingError):
    """``--output_dir`` cannot be used: not writable, or in use by another run."""

    exit_status = 2


class LaunchError(TrainingError):
    """The processes started are not those ``accelerate launch`` was asked for."""

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
    "FlagError",
    "LaunchError",
    "NonFiniteWeightsError",
    "OutputDirError",
    "TrainingError",
]
