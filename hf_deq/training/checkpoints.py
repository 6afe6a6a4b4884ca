"""Checkpoint folders: ``step_N`` / ``epoch_N`` in ``--output_dir``, written atomically (``<name>.tmp``, then a
rename), found again by ``--resume_from_checkpoint latest``; and the guard that keeps a saved model from being
overwritten."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")
#: the file a checkpoint's position and counters live in: the resume contract
STATE_FILE = "trainer_state.json"


class CheckpointError(ValueError):
    """``--resume_from_checkpoint`` names no usable checkpoint."""


def holds_a_model(output_dir: str | os.PathLike) -> bool:
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


def resolve_checkpoint(resume_from: str, output_dir: str | os.PathLike | None) -> Path:
    """``--resume_from_checkpoint`` value to a folder (a path, or ``latest`` for the newest one in
    ``output_dir``) that holds ``trainer_state.json``. A folder without it is refused: every checkpoint the loop
    writes has it (written before the rename), and a position guessed from a folder name would silently lose the
    loss sums, timings and skipped-step count, or be wrong under another batch size."""
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
    """``accelerator.save_state`` into ``<name>.tmp`` (plus ``extra`` as ``trainer_state.json`` and whatever
    ``write_files(folder)`` writes, on the main process), then rename to ``<name>``: a crash while saving never
    leaves a half-written checkpoint under a name that resuming would pick."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f"{name}.tmp"
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
    accelerator.wait_for_everyone()
    return final


__all__ = [
    "CHECKPOINT_PATTERN",
    "STATE_FILE",
    "CheckpointError",
    "holds_a_model",
    "list_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint_atomically",
]
