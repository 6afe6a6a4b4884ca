"""``scripts/evaluate_deq.py``: evaluating a saved model reproduces the training script's final evaluation, and
a sweep over solvers and budgets reports one row each (solver steps bounded by the budget)."""

from __future__ import annotations

import json
import math

import pytest
from script_loading import load_script
from tiny_runs import lm_args, mdeq_args, small_text_file


def test_mdeq_evaluation_matches_training_and_sweeps_budgets(tmp_path, fresh_accelerate_state):
    out = tmp_path / "mdeq"
    trained = load_script("train_mdeq_classifier").main(mdeq_args(out, steps=3))
    data = [
        "--",
        "--max_eval_samples",
        "24",
        "--per_device_eval_batch_size",
        "24",
        "--torch_num_threads",
        "1",
    ]
    evaluate = load_script("evaluate_deq")
    (row,) = evaluate.main(["--model_name_or_path", str(out), *data])
    before = (out / "config.json").read_text()
    assert row["num_examples"] == trained["eval_num_examples"] == 24
    assert row["metric"] == pytest.approx(trained["eval_accuracy"], abs=1e-12)
    assert row["loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)

    sweep = tmp_path / "sweep.json"
    rows = evaluate.main(
        ["--model_name_or_path", str(out), "--solvers", "anderson,fixed_point", "--budgets", "1,3"]
        + ["--output_file", str(sweep), *data]
    )
    assert [(r["solver"], r["budget"]) for r in rows] == [
        ("anderson", 1), ("anderson", 3), ("fixed_point", 1), ("fixed_point", 3),
    ]  # fmt: skip
    assert all(r["solver_nstep"] <= r["budget"] and 0 <= r["metric"] <= 1 for r in rows)
    assert json.loads(sweep.read_text()) == json.loads(json.dumps(rows))
    assert (out / "config.json").read_text() == before  # evaluating never rewrites the saved model


def test_lm_evaluation_matches_training(tmp_path, fresh_accelerate_state):
    text = small_text_file(tmp_path)
    out = tmp_path / "lm"
    trained = load_script("train_deq_lm").main(lm_args(out, text, steps=2))
    data = ["--train_file", str(text), "--block_size", "16", "--max_eval_samples", "16"]
    data += ["--per_device_eval_batch_size", "8", "--torch_num_threads", "1"]
    (row,) = load_script("evaluate_deq").main(["--model_name_or_path", str(out), "--", *data])
    assert row["metric_name"] == "perplexity" and row["num_examples"] == 16
    assert row["loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)
    assert row["metric"] == pytest.approx(math.exp(trained["eval_loss"]), rel=1e-5)


def test_an_existing_output_file_is_kept_unless_asked(tmp_path, capsys):
    existing = tmp_path / "sweep.json"
    existing.write_text("[]")
    script = load_script("evaluate_deq")
    with pytest.raises(SystemExit):
        script.parse_args(["--model_name_or_path", "m", "--output_file", str(existing)])
    assert "pass --overwrite_output_file" in capsys.readouterr().err and existing.read_text() == "[]"
    args, _ = script.parse_args(
        ["--model_name_or_path", "m", "--output_file", str(existing), "--overwrite_output_file"]
    )
    assert args.overwrite_output_file


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--budgets", "0,4"], "integers >= 1"),
        (["--budgets", "four"], "comma-separated integers"),
        (["--solvers", "gmres"], "unknown forward solver 'gmres'"),
        (["--output_file", "somewhere/config.json"], "would overwrite a model file"),
    ],
)
def test_bad_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        load_script("evaluate_deq").parse_args(["--model_name_or_path", "m", *flags])
    assert message in capsys.readouterr().err
