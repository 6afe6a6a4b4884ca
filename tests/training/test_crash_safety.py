"""Crash safety and exact resumes of the shared training loop, for both families.

A training script killed with SIGKILL right after a checkpoint resumes with ``--resume_from_checkpoint latest``
and then reproduces, step for step, the losses of an uninterrupted run with the same seed (CPU, deterministic
algorithms, one thread; dropout, augmentation and the unrolled warm-up in play), and ends with the very same
weights. Checkpoints are written to ``<name>.tmp`` and renamed, so a crash while saving leaves the previous
checkpoint intact and a leftover ``step_N.tmp`` is never picked by ``latest``; a folder without
``trainer_state.json`` is refused. The scripts refuse an ``--output_dir`` that already holds a model unless
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
    FAMILIES,
    FAMILY_SCRIPTS,
    LM_SCRIPT,
    MDEQ_SCRIPT,
    REPO,
    family_args,
    mdeq_args,
    read_log,
    run_checked,
    script_env,
    small_text_file,
    step_losses,
)

from hf_deq.training import CheckpointError, list_checkpoints, resolve_checkpoint, save_checkpoint_atomically

TOTAL_STEPS = 32


def _crash_args(family: str, output_dir: Path, log: Path, text: Path, *extra: str) -> list[str]:
    """16 steps per epoch, 2 epochs; dropout (and random crops for images) draw from the RNG, the first 6 steps
    are the unrolled warm-up (so the resume from step 4 starts inside it): an exact resume needs the per-step
    seeds, the sampler, the optimizer and the estimator schedule to line up."""
    common = [
        "--max_train_steps", str(TOTAL_STEPS),
        "--checkpointing_steps", "4",
        "--unrolled_warmup_steps", "6", "--unrolled_warmup_depth", "2",
        "--solver_on_failure", "ignore",
        "--seed", "5",
        "--torch_num_threads", "1",
        "--disable_tqdm",
        "--output_dir", str(output_dir),
        "--log_file", str(log),
    ]  # fmt: skip
    if family == "mdeq":
        data = [
            "--preset", "test_mdeq_tiny",
            "--dataset_name", "digits",
            "--max_train_samples", "128",
            "--max_eval_samples", "24",
            "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "24",
            "--config_overrides", '{"dropout": 0.1}',
            "--augment", "crop",
        ]  # fmt: skip
    else:
        data = [
            "--preset", "test_deq_transformer_tiny",
            "--train_file", str(text),
            "--train_tokenizer", "char",
            "--block_size", "16",
            "--max_train_samples", "64",
            "--per_device_train_batch_size", "4",
            "--max_eval_samples", "8",
            "--per_device_eval_batch_size", "8",
            "--config_overrides", '{"hidden_dropout": 0.1}',
        ]  # fmt: skip
    script = MDEQ_SCRIPT if family == "mdeq" else LM_SCRIPT
    return [sys.executable, "-c", DETERMINISTIC_LAUNCHER, str(script), *data, *common, *extra]


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
@pytest.mark.parametrize("family", FAMILIES)
def test_sigkill_after_a_checkpoint_then_resume_reproduces_the_uninterrupted_run(family, tmp_path):
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    ref_log, killed_log, resumed_log = (tmp_path / f"{n}.jsonl" for n in ("reference", "killed", "resumed"))
    text = small_text_file(tmp_path)

    def args(output_dir: Path, log: Path, *extra: str) -> list[str]:
        return _crash_args(family, output_dir, log, text, *extra)

    run_checked(args(reference, ref_log), script_env(), timeout=300)
    expected = step_losses(read_log(ref_log))
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))

    checkpoint = _kill_after_first_checkpoint(args(victim, killed_log), victim)
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
        args(victim, resumed_log, "--resume_from_checkpoint", "latest"), script_env(), timeout=300
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
    assert results["eval_loss"] == json.loads((reference / "all_results.json").read_text())["eval_loss"]
    assert json.loads((victim / "config.json").read_text())["grad_estimator"] == "upg"  # after the warm-up
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
        (tmp_path / name / "trainer_state.json").write_text("{}")
    (tmp_path / "step_40").write_text("a file, not a checkpoint folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_1", "step_3", "step_10"]
    assert resolve_checkpoint("latest", tmp_path).name == "step_10"
    only_tmp = tmp_path / "only_tmp"
    (only_tmp / "step_5.tmp").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint("latest", only_tmp)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "step_99"), tmp_path)


def test_a_checkpoint_without_its_state_file_is_refused_not_guessed_from_its_name(tmp_path, capsys):
    """``trainer_state.json`` is the resume contract: a folder named like a checkpoint but without it is refused
    (its position, loss sums and skipped-step count are unknown), at parse time, naming the flag."""
    (tmp_path / "step_8").mkdir()
    (tmp_path / "step_8" / "model.safetensors").write_text("weights only")
    with pytest.raises(CheckpointError, match="has no trainer_state.json"):
        resolve_checkpoint("latest", tmp_path)
    for family in FAMILIES:
        with pytest.raises(SystemExit) as exit_info:
            load_script(FAMILY_SCRIPTS[family]).parse_args(
                family_args(family, tmp_path, tmp_path, "--resume_from_checkpoint", "latest")
            )
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error: argument --resume_from_checkpoint:" in err and "has no trainer_state.json" in err


# -- output directory guard ------------------------------------------------------------------------------------
@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "all_results.json"])
def test_scripts_refuse_an_output_dir_that_holds_a_model(tmp_path, fresh_accelerate_state, marker, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).write_text("{}")
    for family in FAMILIES:
        with pytest.raises(SystemExit) as exit_info:
            load_script(FAMILY_SCRIPTS[family]).main(family_args(family, out, tmp_path))
        assert exit_info.value.code == 2
        assert "already holds a model; pass --overwrite_output_dir" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [marker]  # nothing written


def test_overwrite_output_dir_replaces_the_model(tmp_path, fresh_accelerate_state):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    results = load_script("train_mdeq_classifier").main(mdeq_args(out, "--overwrite_output_dir", steps=1))
    assert results["train_steps"] == 1
    assert json.loads((out / "config.json").read_text())["model_type"] == "mdeq"
