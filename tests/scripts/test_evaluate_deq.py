"""``scripts/evaluate_deq.py``: evaluating a saved model reproduces the training script's final evaluation, and
a sweep over solvers and budgets reports one row each (solver steps bounded by the budget)."""

from __future__ import annotations

import json
import math
import sys

import pytest
from script_loading import load_script
from tiny_runs import lm_args, mdeq_args, small_text_file

from hf_deq.tasks import get_task


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


def test_a_trained_lm_is_evaluated_on_the_data_it_was_trained_with(tmp_path, capsys, fresh_accelerate_state):
    """The training record carries the text file, its split and the block size (16 here; the flag's default is
    128): with no data flag the evaluation is the training run's final one; a flag given overrides its recorded
    value and says so."""
    text = small_text_file(tmp_path)
    out = tmp_path / "lm"
    trained = load_script("train_deq_lm").main(
        lm_args(out, text, "--validation_split_percentage", "20", steps=2)
    )
    evaluate = load_script("evaluate_deq")
    capsys.readouterr()
    (row,) = evaluate.main(["--model_name_or_path", str(out), "--", "--torch_num_threads", "1"])
    err = capsys.readouterr().err
    assert row["num_examples"] == trained["eval_num_examples"] == 16
    assert row["loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)
    assert f"--train_file {text}" in err and "--block_size 16" in err and "overrides" not in err

    (row,) = evaluate.main(["--model_name_or_path", str(out), "--", "--block_size", "8"])
    assert "note: --block_size 8 overrides the training run's --block_size 16" in capsys.readouterr().err
    assert row["num_examples"] == 16 and row["loss"] != pytest.approx(trained["eval_loss"], rel=1e-5)


def test_recorded_data_is_replaced_by_other_data_and_a_missing_record_is_warned(tmp_path, capsys):
    script = load_script("evaluate_deq")
    task = get_task("causal-lm")
    model = tmp_path / "model"
    model.mkdir()
    defaults, messages = script.recorded_data_flags(str(model), task, [])
    assert defaults == {} and "has no training_record.json" in messages[0]

    text = tmp_path / "train.txt"
    text.write_text("x")
    args = {"train_file": str(text), "validation_file": None, "dataset_name": None, "block_size": 64}
    (model / "training_record.json").write_text(json.dumps({"format_version": 1, "args": args}))
    defaults, _ = script.recorded_data_flags(str(model), task, ["--block_size", "32"])
    assert defaults == args  # the command line wins at parse time
    defaults, messages = script.recorded_data_flags(str(model), task, ["--dataset_name", "org/data"])
    assert defaults == {"block_size": 64}
    assert (
        f"note: --dataset_name org/data replaces the data of the training run (--train_file {text}"
        in messages[0]
    )
    text.unlink()
    with pytest.raises(SystemExit) as exit_:
        script.recorded_data_flags(str(model), task, [])
    assert exit_.value.code == 2 and f"--train_file {text}, recorded in" in capsys.readouterr().err


def test_a_budget_sweep_is_plotted_and_saved_with_the_model_for_its_card(
    tmp_path, capsys, monkeypatch, fresh_accelerate_state
):
    from hf_deq import hub
    from hf_deq.hub.budget_sweep import BUDGET_SWEEP_FILE, BUDGET_SWEEP_PLOT

    out = tmp_path / "mdeq"
    load_script("train_mdeq_classifier").main(mdeq_args(out, steps=2))
    data = [
        "--",
        "--max_eval_samples",
        "16",
        "--per_device_eval_batch_size",
        "16",
        "--torch_num_threads",
        "1",
    ]
    sweep = ["--model_name_or_path", str(out), "--budgets", "1,3", "--save_to_model_dir", *data]
    evaluate = load_script("evaluate_deq")
    rows = evaluate.main([*sweep[: -len(data)], "--output_file", str(tmp_path / "sweep.json"), *data])
    png = b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sweep.png").read_bytes()[:8] == png  # beside --output_file
    assert (out / BUDGET_SWEEP_PLOT).read_bytes()[:8] == png
    saved = json.loads((out / BUDGET_SWEEP_FILE).read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["device"].startswith("cpu")
    card = hub.render_model_card(out)
    assert "## How much compute at inference" in card and f"]({BUDGET_SWEEP_PLOT})" in card
    for row in rows:
        assert f"| {row['solver']} | {row['budget']} | {100 * row['metric']:.2f}% |" in card

    before = (out / BUDGET_SWEEP_FILE).read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # an earlier sweep is not replaced without asking
        evaluate.main(sweep)
    assert exit_info.value.code == 2 and "pass --overwrite_output_file" in capsys.readouterr().err
    assert (out / BUDGET_SWEEP_FILE).read_text() == before

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # matplotlib not installed
    (out / BUDGET_SWEEP_PLOT).unlink()
    evaluate.main(
        [*sweep[: -len(data)], "--overwrite_output_file", "--plot_file", str(tmp_path / "p.png"), *data]
    )
    notes = [line for line in capsys.readouterr().err.splitlines() if "matplotlib" in line]
    assert len(notes) == 1 and "no plot was written" in notes[0]
    assert not (tmp_path / "p.png").exists() and not (out / BUDGET_SWEEP_PLOT).exists()
    assert "| 3 |" in hub.render_model_card(out) and BUDGET_SWEEP_PLOT not in hub.render_model_card(out)
