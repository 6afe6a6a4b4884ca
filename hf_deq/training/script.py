"""The entry points of a training script: a script names its task and gets ``(task, parse_args, main)``.

This is the one place where a training script's failures become what its user reads: a refused flag
(``FlagError``), a bad input of the data or the task (``hf_deq.data.errors.InputError``), a run that cannot go on or cannot be right (``TrainingError``: divergence,
output folder, non-finite weights, a failed save) and a failed final ``--push_to_hub`` are one ``error:`` line,
never a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .arguments import parse_args as parse_training_args
from .errors import FlagError, LaunchError, TrainingError
from .hooks import TrainingHook
from .loop import train
from .task import TrainingTask, get_task

#: how to start N processes on CPU: ``accelerate launch --cpu --num_processes N`` starts one
CPU_LAUNCH = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N {script} ..."


def tracker_names() -> list[str]:
    """What ``--report_to`` takes: accelerate's trackers (``LoggerType``: ``all``, ``tensorboard``, ...) and
    ``none`` (no tracking, as in transformers)."""
    from accelerate.utils import LoggerType

    return [*(t.value for t in LoggerType), "none"]


def launch_help(script: str) -> str:
    """The launch section of every training script's ``--help``."""
    return (
        f"Several processes:\n    accelerate launch --num_processes N {script} ...  # GPUs\n"
        f"    {CPU_LAUNCH.format(script=script)}  # CPU\n"
        "(accelerate launch --cpu --num_processes N starts one process, so the script refuses it)."
    )


def fail(script: str, message: str) -> None:
    """Print ``<script>: error: <message>`` (one line) to stderr and exit with status 2, as argparse does."""
    print(f"{script}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def error_lines(script: str, output_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """Run a script's body: a bad input (``InputError``) is one ``error:`` line naming its flag, a
    ``TrainingError`` one line with its own exit status, and a failed
    final push is one ``error:`` line with the cause, then where the model is saved and the retry command
    (exit status 2 both)."""
    from ..data.errors import InputError
    from ..hub.errors import HubPushError

    try:
        yield
    except InputError as err:  # FlagError included
        fail(script, f"argument {err.flag}: {err}")
    except TrainingError as err:  # a run that cannot go on or cannot be right: one line, no traceback
        print(f"{script}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_status) from None
    except HubPushError as err:
        cause, _, rest = str(err).partition("\nThe trained model is saved in ")
        print(f"{script}: error: argument --push_to_hub: {' '.join(cause.split())}", file=sys.stderr)
        if rest:
            print(f"The trained model is saved in {rest.strip()}", file=sys.stderr)
        elif output_dir is not None:
            print(f"The trained model is saved in {output_dir}", file=sys.stderr)
        raise SystemExit(2) from None


def requested_processes() -> int | None:
    """The ``--num_processes`` that ``accelerate launch`` was given when it started this script as a single
    process (its simple launcher: ``--cpu``, or no ``--multi_gpu`` on a machine without GPUs); ``None`` when
    this process was not started that way or the request cannot be read (``/proc`` only)."""
    if "ACCELERATE_DYNAMO_BACKEND" not in os.environ or os.environ.get("WORLD_SIZE", "1") != "1":
        return None  # not started by accelerate launch, or started as one of several processes
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "launch" not in argv:
        return None
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--num_processes", "--num-processes"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else None
    return None


def check_script_args(args: Any, script: str) -> Any:
    """What only a training script (not a benchmark or an evaluation that reuses its flags) requires of ``args``:
    an ``--output_dir`` to save into, a known ``--report_to``, and the processes ``accelerate launch`` was asked
    for (``script`` names the script). Raises ``FlagError`` / ``LaunchError``; returns the arguments to run
    with (``--report_to none``: no tracking), ``args`` left as it is."""
    if args.output_dir is None:
        raise FlagError(
            "output_dir",
            None,
            "required: the trained model, its processing class and all_results.json are saved there (nothing is "
            "saved without it)",
        )
    if args.report_to not in (trackers := tracker_names()):
        raise FlagError(
            "report_to", args.report_to, f"invalid choice {args.report_to!r} (choose from {trackers})"
        )
    requested = requested_processes()
    if requested is not None and requested > 1:
        raise LaunchError(
            f"accelerate launch was asked for {requested} processes (--num_processes {requested}) but started "
            f"one: on CPU launch with {CPU_LAUNCH.replace('N', str(requested)).format(script=script)}"
        )
    return dataclasses.replace(args, with_tracking=False) if args.report_to == "none" else args


def training_script(
    task_name: str,
    script_file: str | os.PathLike,
    description: str | None = None,
    hooks: Iterable[TrainingHook] = (),
) -> tuple[TrainingTask, Callable[..., Any], Callable[..., dict[str, Any]]]:
    """``(task, parse_args, main)`` of the script ``script_file`` that trains ``task_name``'s models:
    ``parse_args(argv)`` parses and checks its flags (one ``error:`` line, exit status 2, on a bad value) and
    ``main(argv)`` trains with the one loop and its ``hooks`` (e.g. ``HubPushHook``) and returns the results;
    ``argv=None`` reads ``sys.argv``; ``description`` is the text of ``--help``. A bad data input found while loading is one ``error:`` line too, before
    training."""
    task = get_task(task_name)
    name = Path(script_file).name
    description = f"{description or ''}\n{launch_help(name)}\n"

    def parse_args(argv: list[str] | None = None) -> Any:
        args = parse_training_args(task, argv, script=name, description=description)
        with error_lines(name):
            return check_script_args(args, name)

    def main(argv: list[str] | None = None) -> dict[str, Any]:
        args = parse_args(argv)
        main_process = os.environ.get("RANK", "0") == "0"
        if main_process:
            print(f"{name}: the model and its results will be saved in {args.output_dir}", file=sys.stderr)
        with error_lines(name, args.output_dir):
            results = train(task, args, hooks)
        if main_process:
            print(f"{name}: saved the model and all_results.json in {args.output_dir}", file=sys.stderr)
        return results

    return task, parse_args, main


__all__ = [
    "CPU_LAUNCH",
    "check_script_args",
    "error_lines",
    "fail",
    "requested_processes",
    "tracker_names",
    "training_script",
]
