"""``--output_dir`` safety: what an earlier run left there is never mixed with a new run (refused, or removed with
``--overwrite_output_dir``), one run at a time holds the folder (a lock file with its pid; a dead run's lock is
taken over), a folder that cannot be written is one ``error:`` line, and a disk that fills while a checkpoint is
written keeps the previous checkpoint and stops with one ``error:`` line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from script_loading import load_script
from tiny_runs import FAMILIES, FAMILY_SCRIPTS, REPO, family_args, mdeq_args, script_env

from hf_deq.training.checkpoints import LOCK_FILE, OutputDirLock, previous_run, resolve_checkpoint

MDEQ = "train_mdeq_classifier"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _fake_checkpoints(out, steps) -> None:
    for step in steps:
        folder = out / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"completed_steps": step, "epoch": 0}))
        (folder / "model.safetensors").write_text("an earlier run's weights")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folder_of_an_earlier_runs_checkpoints_is_refused(family, tmp_path, fresh_accelerate_state, capsys):
    """What a killed run leaves: checkpoints only. Writing step_1.. over them would let ``latest`` resume the
    old run's step_40."""
    out = tmp_path / "out"
    _fake_checkpoints(out, [11, 40])
    with pytest.raises(SystemExit) as exit_info:
        load_script(FAMILY_SCRIPTS[family]).main(
            family_args(family, out, tmp_path, "--checkpointing_steps", "1")
        )
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert (
        "error: argument --output_dir:" in line
        and "2 checkpoint(s) of an earlier run (step_11 ... step_40)" in line
    )
    assert "--resume_from_checkpoint latest" in line and "--overwrite_output_dir" in line
    assert sorted(p.name for p in out.iterdir()) == ["step_11", "step_40"]


def test_overwrite_output_dir_removes_the_earlier_runs_files_only(tmp_path, fresh_accelerate_state, capsys):
    out = tmp_path / "out"
    _fake_checkpoints(out, [11, 40])
    (out / "step_41.tmp").mkdir()  # a half-written checkpoint of the earlier run
    for name in ("all_results.json", "history.json", "config.json", "model.safetensors"):
        (out / name).write_text("{}")
    (out / "notes.txt").write_text("the user's own file")
    (out / "step_0").mkdir()  # named like a checkpoint but not one of this library's: kept
    results = load_script(MDEQ).main(
        mdeq_args(out, "--overwrite_output_dir", "--checkpointing_steps", "1", steps=2)
    )
    assert results["train_steps"] == 2
    printed = capsys.readouterr().out
    assert (
        "--overwrite_output_dir: removed from" in printed
        and "step_40" in printed
        and "step_41.tmp" in printed
    )
    assert sorted(p.name for p in out.glob("step_*")) == ["step_0", "step_1", "step_2"]
    assert resolve_checkpoint("latest", out) == out / "step_2"
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert json.loads((out / "all_results.json").read_text())["train_steps"] == 2
    assert not (out / LOCK_FILE).exists()  # released at the end
    assert {p.name for p in previous_run(out)} >= {
        "step_1",
        "step_2",
        "all_results.json",
        "model.safetensors",
    }


def test_a_second_run_on_the_same_output_dir_is_refused(
    tmp_path, fresh_accelerate_state, monkeypatch, capsys
):
    """Another process holds the folder (its lock): the run stops with one error line naming that process,
    before any data is loaded, and writes nothing; once that process is gone its lock is taken over."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hf_deq.training.checkpoints import OutputDirLock; "
            f"OutputDirLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(120)",
        ],
        env={**script_env(), "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as exit_info:  # seen at parse time
            load_script(MDEQ).main(mdeq_args(out, steps=1))
        assert exit_info.value.code == 2
        line = _error_line(capsys)
        assert f"error: argument --output_dir: {out} is in use by another run (pid {holder.pid} on" in line, (
            line
        )
        # ... and if both runs passed that check at once, the lock itself refuses the second one
        monkeypatch.setattr(OutputDirLock, "holder", staticmethod(lambda output_dir: None))
        with pytest.raises(SystemExit) as exit_info:
            load_script(MDEQ).main(mdeq_args(out, steps=1))
        assert exit_info.value.code == 2
        line = _error_line(capsys)
        assert f"error: --output_dir {out} is in use by another run (pid {holder.pid} on" in line, line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (out / LOCK_FILE).is_file()  # the killed holder left its lock file behind: stale, taken over
    results = load_script(MDEQ).main(mdeq_args(out, steps=1))
    assert results["train_steps"] == 1 and not (out / LOCK_FILE).exists()


def test_the_lock_is_exclusive_and_released(tmp_path):
    first = OutputDirLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    from hf_deq.training.errors import OutputDirError

    with pytest.raises(OutputDirError, match="is in use by another run"):
        OutputDirLock(tmp_path).acquire()
    first.release()
    with OutputDirLock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert not (tmp_path / LOCK_FILE).exists()


def test_an_output_dir_that_is_a_file_or_not_writable_is_one_error_line(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for out, fragment in ((a_file, "is a file, not a folder"), (a_file / "below", "is a file, so")):
        with pytest.raises(SystemExit) as exit_info:
            load_script(MDEQ).parse_args(mdeq_args(out))
        assert exit_info.value.code == 2
        line = _error_line(capsys)
        assert "error: argument --output_dir:" in line and fragment in line, line
    # Read-only: (the tests may run as root, whom a chmod does not stop) what os.access says is what counts.
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(read_only) else real_access(p, mode)
    )
    with pytest.raises(SystemExit):
        load_script(MDEQ).parse_args(mdeq_args(read_only / "run"))
    line = _error_line(capsys)
    assert f"error: argument --output_dir: {read_only} is not writable" in line, line


def test_a_disk_that_fills_during_a_checkpoint_keeps_the_previous_one(
    tmp_path, fresh_accelerate_state, monkeypatch, capsys
):
    from accelerate import Accelerator

    real_save_state = Accelerator.save_state
    calls = {"n": 0}

    def save_state(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half-written, then the disk is full
            os.makedirs(output_dir, exist_ok=True)
            open(os.path.join(output_dir, "model.safetensors"), "w").write("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        load_script(MDEQ).main(mdeq_args(out, "--checkpointing_steps", "1", steps=3))
    assert exit_info.value.code == 1
    line = _error_line(capsys)
    assert "could not write checkpoint step_2 into" in line and "No space left on device" in line, line
    assert "the previous checkpoint step_1 is kept" in line
    assert sorted(p.name for p in out.glob("step_*")) == ["step_1"]  # no step_2, no step_2.tmp
    assert resolve_checkpoint("latest", out) == out / "step_1"
    assert load_file(out / "step_1" / "model.safetensors")  # complete and readable
    assert not (out / "model.safetensors").exists() and not (out / LOCK_FILE).exists()


def test_the_other_ranks_of_a_job_do_not_see_their_own_rank_0s_lock(tmp_path, monkeypatch):
    """Every rank of ``accelerate launch`` parses the flags; rank 0 may hold the lock by then."""
    out = tmp_path / "out"
    out.mkdir()
    with OutputDirLock(out):
        monkeypatch.setenv("RANK", "1")
        assert load_script(MDEQ).parse_args(mdeq_args(out)).output_dir == str(out)
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(SystemExit):
            load_script(MDEQ).parse_args(mdeq_args(out))


def test_a_disk_that_fills_while_the_final_model_is_written_is_one_error_line(
    tmp_path, fresh_accelerate_state, monkeypatch, capsys
):
    import hf_deq

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hf_deq.MDEQForImageClassification, "save_pretrained", full_disk)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        load_script(MDEQ).main(mdeq_args(out, "--checkpointing_steps", "1", steps=1))
    assert exit_info.value.code == 1
    line = _error_line(capsys)
    assert f"could not write the final model into {out} (No space left on device)" in line, line
    assert resolve_checkpoint("latest", out) == out / "step_1" and not (out / "all_results.json").exists()
