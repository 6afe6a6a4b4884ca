"""The entry points of a training script: a script names its task and gets ``(task, parse_args, main)``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .arguments import parse_args as parse_training_args
from .errors import TrainingError
from .loop import train
from .task import TrainingTask, get_task


def training_script(
    task_name: str, script_file: str | os.PathLike, description: str | None = None
) -> tuple[TrainingTask, Callable[..., Any], Callable[..., dict[str, Any]]]:
    """``(task, parse_args, main)`` of the script ``script_file`` that trains ``task_name``'s models:
    ``parse_args(argv)`` parses and checks its flags (one ``error:`` line, exit status 2, on a bad value) and
    ``main(argv)`` trains with the one loop and returns the results; ``argv=None`` reads ``sys.argv``."""
    task = get_task(task_name)
    name = Path(script_file).name

    def parse_args(argv: list[str] | None = None):
        return parse_training_args(task, argv, script=name, description=description)

    def main(argv: list[str] | None = None) -> dict[str, Any]:
        args = parse_args(argv)
        try:
            return train(task, args)
        except TrainingError as err:  # a run that cannot go on or cannot be right: one line, no traceback
            print(f"{name}: error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_status) from None

    return task, parse_args, main


__all__ = ["training_script"]
