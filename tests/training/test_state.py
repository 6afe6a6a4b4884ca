"""``TrainingState``: what a checkpoint's ``trainer_state.json`` holds, saved atomically with the
accelerator state and the files the loop adds (the processing class), and read back unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_deq.training import TrainingState, list_checkpoints, resolve_checkpoint


class _FakeAccelerator:
    is_main_process = True

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        Path(path, "model.safetensors").write_text("weights")

    def load_state(self, path: str) -> None:
        self.loaded.append(path)


def test_save_then_load_gives_the_same_state(tmp_path):
    state = TrainingState(completed_steps=6, epoch=1, batches_in_epoch=2, loss_sum=3.5, loss_count=6)
    state.skipped_nonfinite_steps = 1
    state.history.append({"epoch": 1, "step": 4, "eval_loss": 1.25})
    accelerator = _FakeAccelerator()
    path = state.save(
        accelerator, tmp_path, "step_6", write_files=lambda d: (d / "extra.txt").write_text("x")
    )
    assert path == tmp_path / "step_6" and (path / "extra.txt").read_text() == "x"
    assert json.loads((path / "trainer_state.json").read_text())["completed_steps"] == 6
    assert resolve_checkpoint("latest", tmp_path) == path and list_checkpoints(tmp_path) == [path]
    loaded = TrainingState.load(path, accelerator)
    assert loaded == state and accelerator.loaded == [str(path)]
    assert loaded.train_loss == pytest.approx(3.5 / 6)


def test_a_state_file_without_the_position_is_refused(tmp_path):
    (tmp_path / "trainer_state.json").write_text('{"epoch": 1}')
    with pytest.raises(ValueError, match=r"lacks \['batches_in_epoch', 'completed_steps'\]"):
        TrainingState.load(tmp_path)
    assert TrainingState.from_dict({"completed_steps": 1, "epoch": 0, "batches_in_epoch": 1, "new": 3})
