"""Checkpoint folders: ``step_N`` / ``epoch_N`` in ``--output_dir``, written atomically (``<name>.tmp``, then a
rename; a failed write keeps the previous one), found again by ``--resume_from_checkpoint latest``; and the guards
of the output folder: what an earlier run left there (refused, or removed with ``--overwrite_output_dir``), and
the lock that keeps two runs out of one folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from ..hub.model_dir import TRAINING_CURVES_FILE
from .errors import CheckpointSaveError, OutputDirError

CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")
#: a checkpoint being written (or left half-written by a crash)
PARTIAL_CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)\.tmp$")
#: the file a checkpoint's position and counters live in: the resume contract
STATE_FILE = "trainer_state.json"
#: a finished run's evaluation history (one entry per evaluation) and training log history (one entry per logging
#: window and per probe: ``TrainingState.log_history``)
HISTORY_FILE = "history.json"
LOG_HISTORY_FILE = "log_history.json"
#: the files a finished run writes next to its checkpoints (model, processing class, results, its picture)
RUN_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "all_results.json",
    HISTORY_FILE,
    LOG_HISTORY_FILE,
    TRAINING_CURVES_FILE,
)
#: the shards of a sharded ``save_pretrained``
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
#: held (``flock``) by the run writing into ``--output_dir``; holds its pid and host
LOCK_FILE = ".hf_deq_training.lock"


class CheckpointError(ValueError):
    """``--resume_from_checkpoint`` names no usable checkpoint."""


def holds_a_model(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` holds a saved model or a finished run's results (what a new run must not
    overwrite without ``--overwrite_output_dir``)."""
    path = Path(output_dir)
    return path.is_dir() and any(
        (path / f).exists() for f in ("config.json", "model.safetensors", "all_results.json")
    )


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``step_N`` / ``epoch_N``) in ``output_dir``, oldest first."""
    path = Path(output_dir)
    if not path.is_dir():
        return []
    found = [
        (int(m.group(2)), p) for p in path.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def previous_run(output_dir: str | os.PathLike) -> list[Path]:
    """What an earlier run of this library left in ``output_dir``: its checkpoints (folders with
    ``trainer_state.json``, and half-written ``<name>.tmp`` ones), its model, processing class and results files.
    Nothing else (the user's own files, tracker logs) is listed."""
    path = Path(output_dir)
    if not path.is_dir():
        return []
    found = [p for p in list_checkpoints(path) if (p / STATE_FILE).is_file()]
    found += sorted(p for p in path.iterdir() if p.is_dir() and PARTIAL_CHECKPOINT_PATTERN.match(p.name))
    found += [path / f for f in RUN_FILES if (path / f).is_file()]
    found += sorted(p for p in path.iterdir() if p.is_file() and SHARD_PATTERN.match(p.name))
    return found


def remove_previous_run(output_dir: str | os.PathLike) -> list[str]:
    """Delete what ``previous_run`` lists (``--overwrite_output_dir``), so that ``latest`` can never pick an
    earlier run's checkpoint and no stale result sits beside the new model; returns the removed names."""
    removed = []
    for path in previous_run(output_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def output_dir_problem(output_dir: str | os.PathLike) -> str | None:
    """Why ``output_dir`` cannot be written into (a file, or in/below a folder this process may not write), else
    ``None``."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        return f"{output_dir} is a file, not a folder"
    existing = path
    while not existing.exists():  # the nearest folder that exists is where it would be created
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {output_dir} cannot be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


class OutputDirLock:
    """One run per ``--output_dir``: ``acquire()`` takes an exclusive ``flock`` on ``<output_dir>/LOCK_FILE``
    (and writes this process's pid and host into it) or raises ``OutputDirError`` naming the run that holds it.
    The OS drops the lock of a process that dies, so a killed run's stale lock file is simply taken over;
    ``release()`` removes the file."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> OutputDirLock:
        import fcntl

        for _ in range(10):  # the holder may remove the file between our open and our lock: open it again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputDirError(f"--output_dir {self.path.parent} is not writable: {err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputDirError(
                    f"--output_dir {self.path.parent} is in use by another run ({holder}; lock file {self.path}):"
                    " wait for it to end or choose another --output_dir"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise OutputDirError(f"--output_dir {self.path.parent}: could not take the lock {self.path}")

    @staticmethod
    def holder(output_dir: str | os.PathLike) -> str | None:
        """Who holds the lock of ``output_dir`` now (the pid and host it wrote), or ``None``: a free lock, or a
        stale file a dead run left. A probe (a shared lock, dropped at once) that takes nothing over."""
        import fcntl

        path = Path(output_dir) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.read(fd, 200).decode(errors="replace").strip() or "unknown"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before unlocking: a run that opened it meanwhile sees another file and retries
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def resolve_checkpoint(resume_from: str, output_dir: str | os.PathLike | None) -> Path:
    """``resume_from`` (the ``--resume_from_checkpoint`` value) to a folder (a path, or ``latest`` for the newest one in
    ``output_dir``) that holds ``trainer_state.json``. A folder without it is refused: every checkpoint the loop
    writes has it (written before the rename), and a position guessed from a folder name would silently lose the
    loss sums, timings and skipped-step count, or be wrong under another batch size."""
    if not resume_from.strip():  # Path("") is the working folder: never what an empty value meant
        raise CheckpointError(f"{resume_from!r} is empty; expected a checkpoint folder or 'latest'")
    if resume_from == "latest":
        found = list_checkpoints(output_dir) if output_dir is not None else []
        if not found:
            raise CheckpointError(f"latest: no checkpoint in {output_dir}")
        path = found[-1]
    else:
        path = Path(resume_from)
        if not path.is_dir():
            raise CheckpointError(f"{resume_from}: no such checkpoint folder")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{path} has no {STATE_FILE}, so it is not a complete checkpoint of this training loop (its "
            "position, loss sums and skipped-step count are unknown); resume from another one"
        )
    return path


def save_checkpoint_atomically(
    accelerator,
    output_dir: str | os.PathLike,
    name: str,
    extra: dict | None = None,
    write_files: Callable[[Path], None] | None = None,
) -> Path:
    """``accelerator.save_state`` into ``output_dir/<name>.tmp`` (plus ``extra`` as ``trainer_state.json`` and whatever
    ``write_files(folder)`` writes, on the main process), then rename to ``<name>``: a crash while saving never
    leaves a half-written checkpoint under a name that resuming would pick."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f"{name}.tmp"
    try:
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # FSDP: every rank has written its shard before the folder is renamed
        if accelerator.is_main_process:
            if extra is not None:
                (tmp / STATE_FILE).write_text(json.dumps(extra, indent=2))
            if write_files is not None:
                write_files(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except (
        OSError
    ) as err:  # a full disk, a folder that went read-only: the checkpoints before stay as they were
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in list_checkpoints(output_dir) if p.name != name]
        raise CheckpointSaveError(
            f"could not write checkpoint {name} into {output_dir} ({err.strerror or err}); "
            + (f"the previous checkpoint {kept[-1]} is kept" if kept else "no earlier checkpoint exists")
        ) from err
    accelerator.wait_for_everyone()
    return final


__all__ = [
    "CHECKPOINT_PATTERN",
    "HISTORY_FILE",
    "LOG_HISTORY_FILE",
    "LOCK_FILE",
    "RUN_FILES",
    "STATE_FILE",
    "CheckpointError",
    "OutputDirLock",
    "holds_a_model",
    "list_checkpoints",
    "output_dir_problem",
    "previous_run",
    "remove_previous_run",
    "resolve_checkpoint",
    "save_checkpoint_atomically",
]
