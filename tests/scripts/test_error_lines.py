"""Every script answers a bad flag value or recipe the way argparse answers a bad choice: one ``error:`` line
naming the flag, exit status 2, before any data is loaded (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from script_loading import load_script
from tiny_runs import REPO, SCRIPTS, script_env

CONFIGS = SCRIPTS / "configs"
LM_RECIPE = str(CONFIGS / "deq-transformer-char-upg.json")
MDEQ_RECIPE = str(CONFIGS / "mdeq-tiny-cifar10-upg.json")

CASES = [
    ("train_mdeq_classifier", ["--solver_max_iter", "-1"], "--solver_max_iter", "solver_max_iter=-1"),
    ("train_mdeq_classifier", ["--preset", "mdeq-foo"], "--preset", "unknown preset 'mdeq-foo'"),
    (
        "train_mdeq_classifier",
        ["--preset", "deq-transformer-char"],
        "--preset",
        "is a deq_transformer preset",
    ),
    ("train_mdeq_classifier", ["--config", LM_RECIPE], "--config", "is a config for train_deq_lm.py"),
    (
        "train_mdeq_classifier",
        ["--config_overrides", '{"solver_max_iter": 0}'],
        "--config_overrides",
        "solver_max_iter=0",
    ),
    ("train_mdeq_classifier", ["--config_overrides", "[1]"], "--config_overrides", "expected a JSON object"),
    ("train_mdeq_classifier", ["--solver_kwargs", '{"memry": 3}'], "--solver_kwargs", "memry"),
    ("train_mdeq_classifier", ["--checkpointing_steps", "often"], "--checkpointing_steps", "'often'"),
    ("train_mdeq_classifier", ["--resume_from_checkpoint", "latest"], "--output_dir", "need it"),
    ("train_mdeq_classifier", ["--learning_rate", "0"], "--learning_rate", "must be > 0"),
    ("train_deq_lm", ["--grad_damping", "2"], "--grad_damping", "grad_damping=2.0"),
    ("train_deq_lm", ["--preset", "mdeq-tiny-digits"], "--preset", "is a mdeq preset"),
    ("train_deq_lm", ["--config", MDEQ_RECIPE], "--config", "is a config for train_mdeq_classifier.py"),
    ("train_deq_lm", ["--block_size", "1"], "--block_size", "at least 2"),
    ("train_deq_lm", ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size", ">= 1"),
    (
        "compare_estimators",
        ["--output_dir", "unused", "--", "--solver_max_iter", "-1"],
        "--solver_max_iter",
        "solver_max_iter=-1",
    ),
    (
        "finetune_with_trainer",
        ["--output_dir", "unused", "--solver_max_iter", "-1"],
        "--solver_max_iter",
        "-1",
    ),
    ("benchmark_generation", ["--solver_tol", "-1"], "--solver_tol", "solver_tol=-1.0"),
    ("benchmark_generation", ["--new_tokens", "0"], "--new_tokens", ">= 1"),
    ("benchmark_adaptive_head", ["--preset", "deq-transformer-char"], "--preset", "no adaptive_cutoffs"),
    ("gpu_check", ["--estimators", "upg,exact"], "--estimators", "'exact'"),
    ("gpu_check", ["--lm_preset", "mdeq-tiny-digits"], "--lm_preset", "not a deq_transformer preset"),
]


def _no_data(monkeypatch) -> None:
    """Loading any data fails the test: the errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    import hf_deq.data.images as images
    import hf_deq.data.text as text

    monkeypatch.setattr(images, "load_image_datasets", refuse)
    monkeypatch.setattr(text, "load_text_datasets", refuse)
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def _one_error_line(err: str, flag: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert f"error: argument {flag}:" in lines[0] or f"error: {flag} " in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("script", "argv", "flag", "fragment"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_a_bad_value_is_one_error_line_naming_its_flag(
    script, argv, flag, fragment, tmp_path, monkeypatch, capsys
):
    _no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, flag, fragment)


def test_evaluate_deq_checks_the_family_flags_before_loading_data(tmp_path, monkeypatch, capsys):
    import hf_deq

    model_dir = tmp_path / "model"
    hf_deq.create_config("test_mdeq_tiny").save_pretrained(model_dir)
    _no_data(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        load_script("evaluate_deq").main(
            ["--model_name_or_path", str(model_dir), "--", "--solver_max_iter", "0"]
        )
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, "--solver_max_iter", "solver_max_iter=0")


def test_a_bad_recipe_value_names_the_key(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"_script": "train_deq_lm.py", "solver_max_iter": -3}))
    _no_data(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_deq_lm").main(["--config", str(recipe)])
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, "--solver_max_iter", "solver_max_iter=-3")


def test_as_a_process_the_script_prints_usage_and_one_error_line(tmp_path):
    """The real command: two short lines on stderr (usage, error), exit status 2, nothing else."""
    cmd = [sys.executable, str(SCRIPTS / "train_mdeq_classifier.py"), "--solver_max_iter", "-1"]
    proc = subprocess.run(cmd, env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: train_mdeq_classifier.py"), proc.stderr
    assert lines[1].startswith("train_mdeq_classifier.py: error: argument --solver_max_iter:"), lines[1]
    assert not Path(tmp_path, "outputs").exists()
