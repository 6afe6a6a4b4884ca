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


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            '{"completed_steps": "abc", "epoch": 0, "batches_in_epoch": 4}',
            "completed_steps='abc' is not an integer >= 0",
        ),
        (
            '{"completed_steps": -5, "epoch": 0, "batches_in_epoch": 4}',
            "completed_steps=-5 is not an integer >= 0",
        ),
        (
            '{"completed_steps": true, "epoch": 0, "batches_in_epoch": 4}',
            "completed_steps=True is not an integer",
        ),
        ('{"completed_steps": 4, "epoch": 0.5, "batches_in_epoch": 4}', "epoch=0.5 is not an integer >= 0"),
        (
            '{"completed_steps": 4, "epoch": 0, "batches_in_epoch": 4, "loss_sum": NaN}',
            "loss_sum=nan is not a finite",
        ),
        (
            '{"completed_steps": 4, "epoch": 0, "batches_in_epoch": 4, "history": {}}',
            "history={} is not a list",
        ),
        ('{"completed_steps": 4, "epoch": 0}', "lacks ['batches_in_epoch']"),
        ("[4, 0, 4]", "expected a JSON object, got list"),
        ('{"completed_steps": 4,', "not a readable JSON file"),
    ],
)
def test_a_corrupt_state_file_is_one_error_line_at_resume(content, fragment, tmp_path, monkeypatch, capsys):
    """Refused before any data is loaded, naming the file, the key and the value."""
    from script_loading import load_script
    from tiny_runs import mdeq_args

    import hf_deq.tasks.image_classification as image_classification

    monkeypatch.setattr(
        image_classification, "load_image_datasets", lambda *a, **k: pytest.fail("data loaded")
    )
    state_file = tmp_path / "step_4" / "trainer_state.json"
    state_file.parent.mkdir()
    state_file.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_mdeq_classifier").main(mdeq_args(tmp_path, "--resume_from_checkpoint", "latest"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"error: argument --resume_from_checkpoint: {state_file}" in lines[0] and fragment in lines[0], (
        lines[0]
    )


def test_a_position_the_run_cannot_have_is_refused_at_resume(tmp_path, fresh_accelerate_state, capsys):
    """``completed_steps`` of 10**9 in a real checkpoint: resuming would skip all training and save the start
    as the result, with exit status 0. It is one error line naming the file, the key and the value."""
    from script_loading import load_script
    from tiny_runs import mdeq_args

    script = load_script("train_mdeq_classifier")
    out = tmp_path / "out"
    script.main(mdeq_args(out, "--checkpointing_steps", "2", steps=2))
    state_file = out / "step_2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert (state["completed_steps"], state["epoch"], state["batches_in_epoch"]) == (2, 0, 2)
    state_file.write_text(json.dumps({**state, "completed_steps": 10**9}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        script.main(mdeq_args(out, "--resume_from_checkpoint", "latest", steps=4))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{state_file}: completed_steps=1000000000" in lines[0] and "at most 2" in lines[0], lines[0]
    assert (
        json.loads((out / "all_results.json").read_text())["train_steps"] == 2
    )  # the first run's, untouched
    state_file.write_text(json.dumps(state))  # the true position resumes
    assert script.main(mdeq_args(out, "--resume_from_checkpoint", "latest", steps=4))["train_steps"] == 4


def test_check_position_accepts_the_positions_the_loop_writes():
    # 5 batches per epoch, accumulation 2: 3 updates per epoch (the last one of a single batch)
    for steps, epoch, batches in [(0, 0, 0), (1, 0, 2), (3, 0, 5), (3, 1, 0), (4, 1, 2), (2, 1, 0)]:
        TrainingState(completed_steps=steps, epoch=epoch, batches_in_epoch=batches).check_position(
            "s", 3, 5, 2
        )
    for steps, epoch, batches in [(4, 1, 0), (2, 0, 2), (1, 0, 6)]:
        with pytest.raises(ValueError, match="s: "):
            TrainingState(completed_steps=steps, epoch=epoch, batches_in_epoch=batches).check_position(
                "s", 3, 5, 2
            )


def test_the_log_history_travels_in_the_state_and_older_states_resume_without_it(tmp_path):
    """``log_history`` (training windows and probes) is saved and read back; a ``trainer_state.json`` written
    before it existed reads as an empty one; anything but a list of objects is refused, naming the key."""
    state = TrainingState(completed_steps=2, epoch=0, batches_in_epoch=2)
    state.log_history.append({"step": 2, "train_loss": 1.5, "grad_alignment_cosine": 0.9})
    path = state.save(_FakeAccelerator(), tmp_path, "step_2")
    assert TrainingState.read(path).log_history == state.log_history
    older = {"completed_steps": 2, "epoch": 0, "batches_in_epoch": 2, "history": [{"step": 2}]}
    assert TrainingState.from_dict(older).log_history == []
    with pytest.raises(ValueError, match=r"log_history=\[1\] is not a list of objects"):
        TrainingState.from_dict({**older, "log_history": [1]})
