"""Crash safety.

A training script killed with SIGKILL right after a checkpoint resumes with ``--resume_from_checkpoint latest``
and then reproduces, step for step, the losses of an uninterrupted run with the same seed (CPU, deterministic
algorithms, one thread), and ends with the very same weights. Checkpoints are written to ``<name>.tmp`` and
renamed, so a crash while saving leaves the previous checkpoint intact and a leftover ``step_N.tmp`` is never
picked by ``latest``. The scripts refuse an ``--output_dir`` that already holds a model unless
``--overwrite_output_dir``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from script_loading import load_script
from tiny_runs import (
    DETERMINISTIC_LAUNCHER,
    MDEQ_SCRIPT,
    REPO,
    lm_args,
    mdeq_args,
    read_log,
    run_checked,
    script_env,
    small_text_file,
    step_losses,
)

from hf_deq.training_utils import list_checkpoints, resolve_checkpoint, save_checkpoint_atomically

TOTAL_STEPS = 32


def _crash_args(output_dir: Path, log: Path, *extra: str) -> list[str]:
    """128 digits in batches of 8: 16 steps per epoch, 2 epochs; dropout and random crops draw from the RNG,
    so an exact resume needs the RNG, sampler and optimizer states of the checkpoint."""
    return [
        sys.executable, "-c", DETERMINISTIC_LAUNCHER, str(MDEQ_SCRIPT),
        "--preset", "test_mdeq_tiny",
        "--dataset_name", "digits",
        "--max_train_samples", "128",
        "--max_eval_samples", "24",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "24",
        "--max_train_steps", str(TOTAL_STEPS),
        "--checkpointing_steps", "4",
        "--config_overrides", '{"dropout": 0.1}',
        "--augment", "crop",
        "--solver_on_failure", "ignore",
        "--seed", "5",
        "--torch_num_threads", "1",
        "--disable_tqdm",
        "--output_dir", str(output_dir),
        "--log_file", str(log),
        *extra,
    ]  # fmt: skip


def _kill_after_first_checkpoint(cmd: list[str], output_dir: Path, timeout: float = 240) -> Path:
    """Start ``cmd``; as soon as a complete ``step_N`` folder appears, SIGKILL the process. Returns it."""
    proc = subprocess.Popen(
        cmd, env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = list_checkpoints(output_dir)
            if found:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                raise AssertionError(
                    f"the run ended before its first checkpoint:\n{proc.stderr.read()[-4000:]}"
                )
            time.sleep(0.01)
        else:
            raise AssertionError("no checkpoint within the time limit")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"killed run exited with {proc.returncode}"
    return found[0]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    ref_log, killed_log, resumed_log = (tmp_path / f"{n}.jsonl" for n in ("reference", "killed", "resumed"))
    run_checked(_crash_args(reference, ref_log), script_env(), timeout=300)
    expected = step_losses(read_log(ref_log))
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))

    checkpoint = _kill_after_first_checkpoint(_crash_args(victim, killed_log), victim)
    saved_step = int(checkpoint.name.split("_")[1])
    assert saved_step < TOTAL_STEPS and not (victim / "all_results.json").exists(), (
        "the run was not cut short"
    )
    for name in ("model.safetensors", "optimizer.bin", "trainer_state.json", "random_states_0.pkl"):
        assert (checkpoint / name).is_file(), name
    killed = step_losses(read_log(killed_log))
    assert killed and all(killed[s] == expected[s] for s in killed)  # same run up to the kill

    # A crash in the middle of a later save leaves a half-written folder under the temporary name: never resumed.
    decoy = victim / f"step_{saved_step + 100}.tmp"
    shutil.copytree(checkpoint, decoy)
    (decoy / "model.safetensors").write_bytes(b"half-written")
    (decoy / "optimizer.bin").unlink()
    assert resolve_checkpoint("latest", victim) == list_checkpoints(victim)[-1]

    latest = list_checkpoints(victim)[-1]
    proc = run_checked(
        _crash_args(victim, resumed_log, "--resume_from_checkpoint", "latest"), script_env(), timeout=300
    )
    assert f"Resumed from checkpoint: {latest}" in proc.stdout
    resumed = step_losses(read_log(resumed_log))
    first = int(latest.name.split("_")[1]) + 1
    assert sorted(resumed) == list(range(first, TOTAL_STEPS + 1))
    mismatched = {s: (resumed[s], expected[s]) for s in resumed if resumed[s] != expected[s]}
    assert not mismatched, f"resumed losses differ from the uninterrupted run: {mismatched}"

    a, b = load_file(reference / "model.safetensors"), load_file(victim / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    results = json.loads((victim / "all_results.json").read_text())
    assert results["train_steps"] == TOTAL_STEPS
    assert (
        results["eval_accuracy"] == json.loads((reference / "all_results.json").read_text())["eval_accuracy"]
    )
    end = [r for r in read_log(resumed_log) if r.get("event") == "end"]
    assert (
        end[0]["parameters_sha256"]
        == [r for r in read_log(ref_log) if r.get("event") == "end"][0]["parameters_sha256"]
    )


# -- atomic checkpoints -----------------------------------------------------------------------------------------
class _FakeAccelerator:
    """Just what ``save_checkpoint_atomically`` uses; ``save_state`` writes a few files, or dies half-way."""

    is_main_process = True

    def __init__(self, crash: bool = False, payload: str = "ok") -> None:
        self.crash, self.payload = crash, payload

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        Path(path, "model.safetensors").write_text(self.payload)
        if self.crash:
            raise KeyboardInterrupt("killed while saving")
        Path(path, "optimizer.bin").write_text(self.payload)


def test_a_crash_while_saving_never_corrupts_the_last_checkpoint(tmp_path):
    save_checkpoint_atomically(
        _FakeAccelerator(payload="good"), tmp_path, "step_2", extra={"completed_steps": 2}
    )
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically(_FakeAccelerator(crash=True, payload="bad"), tmp_path, "step_4")
    assert (tmp_path / "step_4.tmp").is_dir() and not (tmp_path / "step_4").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]
    assert resolve_checkpoint("latest", tmp_path) == tmp_path / "step_2"
    assert (tmp_path / "step_2" / "model.safetensors").read_text() == "good"
    assert json.loads((tmp_path / "step_2" / "trainer_state.json").read_text()) == {"completed_steps": 2}

    # Saving the same name again (a re-run after the crash) clears the stale temporary folder first.
    save_checkpoint_atomically(_FakeAccelerator(payload="new"), tmp_path, "step_4")
    assert not (tmp_path / "step_4.tmp").exists()
    assert (tmp_path / "step_4" / "optimizer.bin").read_text() == "new"
    # ... and an existing checkpoint of that name is replaced, never merged with.
    (tmp_path / "step_4" / "stale.txt").write_text("old")
    save_checkpoint_atomically(_FakeAccelerator(payload="newer"), tmp_path, "step_4")
    assert not (tmp_path / "step_4" / "stale.txt").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_4"]


def test_latest_ignores_temporary_and_foreign_folders(tmp_path):
    for name in ("step_3", "step_10", "epoch_1", "step_12.tmp", "step_20.tmp", "step_x", "steps_30", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "step_40").write_text("a file, not a checkpoint folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_1", "step_3", "step_10"]
    assert resolve_checkpoint("latest", tmp_path).name == "step_10"
    only_tmp = tmp_path / "only_tmp"
    (only_tmp / "step_5.tmp").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no checkpoint"):
        resolve_checkpoint("latest", only_tmp)
    with pytest.raises(SystemExit, match="no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "step_99"), tmp_path)


# -- output directory guard ------------------------------------------------------------------------------------
@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "all_results.json"])
def test_scripts_refuse_an_output_dir_that_holds_a_model(tmp_path, fresh_accelerate_state, marker):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).write_text("{}")
    with pytest.raises(SystemExit, match="already holds a model; pass --overwrite_output_dir"):
        load_script("train_mdeq_classifier").main(mdeq_args(out))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(SystemExit, match="already holds a model; pass --overwrite_output_dir"):
        load_script("train_deq_lm").main(lm_args(out, small_text_file(tmp_path)))
    assert sorted(p.name for p in out.iterdir()) == [marker]  # nothing written


def test_overwrite_output_dir_replaces_the_model(tmp_path, fresh_accelerate_state):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    results = load_script("train_mdeq_classifier").main(mdeq_args(out, "--overwrite_output_dir", steps=1))
    assert results["train_steps"] == 1
    assert json.loads((out / "config.json").read_text())["model_type"] == "mdeq"
