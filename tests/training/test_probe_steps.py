"""``--probe_steps N``: the gradient alignment measured every N optimizer steps lands in the log line's records
(``log_history``), ``all_results.json`` and ``--log_file``; probing trains exactly as not probing (same final
weights), is not training time, and the training log history survives a resume."""

from __future__ import annotations

import json
import time

import pytest
from script_loading import load_script
from tiny_runs import FAMILIES, FAMILY_SCRIPTS, family_args, mdeq_args, read_log

from hf_deq.training.probe import GradientProbe

PROBE_KEYS = ("grad_alignment_cosine", "grad_alignment_relative_error", "probe_time")
TIMES = ("train_time", "probe_time")


def _train(family: str, out, tmp_path, *extra: str, steps: int = 4) -> dict:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # in-process runs share accelerate's singleton
    return load_script(FAMILY_SCRIPTS[family]).main(family_args(family, out, tmp_path, *extra, steps=steps))


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_is_logged_at_the_probe_steps(family, tmp_path):
    out, log = tmp_path / "out", tmp_path / "steps.jsonl"
    extra = ("--probe_steps", "2", "--logging_steps", "3", "--log_file", str(log))
    results = _train(family, out, tmp_path, *extra, steps=5)

    history = results["log_history"]
    assert [e["step"] for e in history] == [2, 3, 4, 5]  # probes at 2, 4; logging windows at 3, 5 (the end)
    probed = [e for e in history if "grad_alignment_cosine" in e]
    assert [e["step"] for e in probed] == [2, 4]
    for entry in probed:
        assert -1.0 <= entry["grad_alignment_cosine"] <= 1.0 and entry["grad_alignment_relative_error"] >= 0
        assert entry["probe_time"] > 0
    assert all("train_loss" in e and "solver_nstep" in e and "solver_residual" in e for e in history[1::2])
    assert json.loads((out / "log_history.json").read_text()) == history

    saved = json.loads((out / "all_results.json").read_text())
    assert saved["grad_alignment_step"] == 4 and saved["probe_count"] == 2
    assert saved["grad_alignment_cosine"] == probed[-1]["grad_alignment_cosine"]
    assert saved["grad_alignment_relative_error"] == probed[-1]["grad_alignment_relative_error"]
    assert saved["probe_time_mean"] == pytest.approx((probed[0]["probe_time"] + probed[1]["probe_time"]) / 2)

    records = {r["step"]: r for r in read_log(log) if "step" in r}
    assert sorted(records) == [1, 2, 3, 4, 5]
    assert [s for s, r in records.items() if "grad_alignment_cosine" in r] == [2, 4]
    assert records[4]["grad_alignment_cosine"] == probed[-1]["grad_alignment_cosine"]
    assert "spectral_radius_max" not in records[4]


def test_an_unprobed_run_records_no_probe(tmp_path):
    results = _train("mdeq", tmp_path / "out", tmp_path, "--logging_steps", "2")
    assert [e["step"] for e in results["log_history"]] == [2, 4]
    assert not any(k in e for e in results["log_history"] for k in PROBE_KEYS)
    assert "grad_alignment_cosine" not in json.loads((tmp_path / "out" / "all_results.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_probing_trains_exactly_as_not_probing_and_is_not_training_time(family, tmp_path, monkeypatch):
    """Every step probed (with the spectral radius too) gives the weights and losses of the unprobed run; a probe
    made to last 2 s more is not counted in ``train_runtime``."""
    measure = GradientProbe.measure

    def slow_measure(self):
        time.sleep(1.0)
        return measure(self)

    runs = {}
    for name, extra in (("plain", ()), ("probed", ("--probe_steps", "1", "--probe_contractivity"))):
        if name == "probed":
            monkeypatch.setattr(GradientProbe, "measure", slow_measure)
        log = tmp_path / f"{name}.jsonl"
        results = _train(family, tmp_path / name, tmp_path, "--log_file", str(log), *extra, steps=3)
        runs[name] = (results, read_log(log))
    (plain, plain_log), (probed, probed_log) = runs["plain"], runs["probed"]
    assert probed_log[-1]["state_dict_sha256"] == plain_log[-1]["state_dict_sha256"]
    assert [r.get("loss") for r in probed_log] == [r.get("loss") for r in plain_log]
    assert probed["eval_loss"] == plain["eval_loss"]
    assert probed["probe_count"] == 3 and probed["spectral_radius_max"] > 0
    assert probed["train_runtime"] < 3.0  # three probes of >= 1 s each are not training time


def test_the_log_history_survives_a_resume(tmp_path):
    """A run resumed from its step-2 checkpoint ends with the log history of the uninterrupted run."""
    extra = ("--probe_steps", "2", "--logging_steps", "1", "--checkpointing_steps", "2")
    whole = _train("mdeq", tmp_path / "whole", tmp_path, *extra)
    state = json.loads((tmp_path / "whole" / "step_2" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"]] == [1, 2]
    resumed = _train(
        "mdeq",
        tmp_path / "resumed",
        tmp_path,
        *extra,
        "--resume_from_checkpoint",
        str(tmp_path / "whole" / "step_2"),
    )

    def without_times(history):
        return [{k: v for k, v in e.items() if k not in TIMES} for e in history]

    assert [e["step"] for e in resumed["log_history"]] == [1, 2, 3, 4]
    for got, want in zip(without_times(resumed["log_history"]), without_times(whole["log_history"])):
        assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--probe_steps", "-1"), "argument --probe_steps: must be an integer >= 0"),
        (
            ("--probe_contractivity",),
            "argument --probe_contractivity: it measures at the --probe_steps probes",
        ),
    ],
)
def test_bad_probe_flags_are_one_error_line(extra, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_mdeq_classifier").parse_args(mdeq_args(tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_probing_an_explicit_model_or_under_fsdp_is_refused(tmp_path, monkeypatch, capsys):
    import torch

    from hf_deq.training import probe

    batch = {"x": torch.zeros(1), "labels": torch.zeros(1)}
    with pytest.raises(probe.ProbeError, match=r"--probe_steps 3: Linear is not a DEQ"):
        probe.GradientProbe(torch.nn.Linear(2, 2), batch, 3)
    monkeypatch.setattr(probe, "_is_sharded", lambda model: True)
    with pytest.raises(SystemExit) as exit_info:
        _train("mdeq", tmp_path / "out", tmp_path, "--probe_steps", "2")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--probe_steps 2: probing is not supported under FSDP" in lines[0], err
