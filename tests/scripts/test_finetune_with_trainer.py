"""``scripts/finetune_with_trainer.py``: ``Trainer`` fine-tunes a saved MDEQ with another gradient estimator
and solver budget, reports accuracy and solver statistics, saves a model that the Auto classes load, and
never writes into a folder that holds a model."""

from __future__ import annotations

import json

import pytest
import torch
from script_loading import load_script
from transformers import AutoImageProcessor, AutoModelForImageClassification

import hf_deq

COMMON = ["--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "8"]
COMMON += ["--per_device_eval_batch_size", "16", "--report_to", "none", "--use_cpu", "--seed", "0"]
COMMON += ["--solver_on_failure", "ignore"]


def test_finetune_a_saved_model_with_another_estimator(tmp_path, fresh_accelerate_state, capsys):
    start = tmp_path / "start"
    hf_deq.create_model("test_mdeq_tiny", num_labels=10, solver_on_failure="ignore").save_pretrained(start)
    script = load_script("finetune_with_trainer")
    out = tmp_path / "finetuned"
    argv = ["--model_name_or_path", str(start), "--grad_estimator", "npg", "--grad_steps", "3"]
    argv += ["--solver_eval_max_iter", "7", "--output_dir", str(out), "--max_steps", "2", *COMMON]
    metrics = script.main(argv)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_solver_nstep"] <= 7
    assert metrics["eval_solver_residual"] > 0 and metrics["epoch"] > 0
    config = json.loads((out / "config.json").read_text())
    assert (config["grad_estimator"], config["grad_steps"], config["solver_eval_max_iter"]) == ("npg", 3, 7)
    model = AutoModelForImageClassification.from_pretrained(out)
    assert isinstance(model, hf_deq.MDEQForImageClassification)
    assert isinstance(AutoImageProcessor.from_pretrained(out), hf_deq.MDEQImageProcessor)
    moved = [k for k, v in model.state_dict().items() if "running" not in k]
    before = hf_deq.MDEQForImageClassification.from_pretrained(start).state_dict()
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in moved)  # the weights were trained

    with pytest.raises(SystemExit) as exit_info:
        script.main(["--output_dir", str(out), "--max_steps", "1", *COMMON])
    assert exit_info.value.code == 2 and "already holds a model" in capsys.readouterr().err


def test_push_to_hub_publishes_with_hf_deq_not_trainer(tmp_path, fresh_accelerate_state, monkeypatch, capsys):
    """``--push_to_hub`` goes through ``hf_deq.hub`` (card + remote code) once, at the end; ``Trainer`` itself
    never contacts the Hub (this session is offline: it would fail)."""
    script = load_script("finetune_with_trainer")
    pushed = []
    monkeypatch.setattr(script, "push_from_args", lambda args, model_dir: pushed.append((args, model_dir)))
    out = tmp_path / "run"
    argv = ["--preset", "test_mdeq_tiny", "--output_dir", str(out), "--max_steps", "1", *COMMON]
    script.main(
        [*argv, "--push_to_hub", "--hub_model_id", "someone/mdeq-digits", "--hub_private_repo", "true"]
    )
    ((args, model_dir),) = pushed
    assert (args.hub_model_id, args.hub_private_repo, model_dir) == ("someone/mdeq-digits", True, str(out))
    assert args.preset == "test_mdeq_tiny" and args.max_steps == 1 and (out / "all_results.json").is_file()
    bad = ["--preset", "test_mdeq_tiny", "--output_dir", str(tmp_path / "other"), "--max_steps", "1", *COMMON]
    with pytest.raises(SystemExit) as exit_info:
        script.main([*bad, "--push_to_hub", "--hub_model_id", "a/b/c"])
    assert exit_info.value.code == 2 and "error: argument --hub_model_id" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before training
