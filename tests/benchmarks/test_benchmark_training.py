"""``scripts/benchmark_training.py``: the time-to-target computation on synthetic histories, both families on
tiny budgets (table and JSON), the explicit models, and one ``error:`` line for a bad flag."""

from __future__ import annotations

import json
import math

import pytest
import torch
from script_loading import load_script

from benchmarks.against_explicit import time_to_target
from benchmarks.explicit_models import (
    ExplicitCNNConfig,
    ExplicitCNNForImageClassification,
    explicit_gpt2,
)
from hf_deq.data.tokenizers import train_tokenizer


def _history(values, key="eval_loss"):
    return [{"step": 100 * (i + 1), "train_time": 10.0 * (i + 1), key: v} for i, v in enumerate(values)]


def test_time_to_target_interpolates_between_the_evaluations_around_the_crossing():
    history = _history([2.5, 2.0, 1.8, 1.7])
    reached = time_to_target(history, "eval_loss", 1.9, higher_is_better=False)
    assert reached["first_eval_step"] == 300 and reached["first_eval_s"] == 30.0
    assert reached["interpolated_s"] == pytest.approx(25.0)  # 20 s + 10 s * (2.0 - 1.9) / (2.0 - 1.8)
    exact = time_to_target(history, "eval_loss", 2.0, higher_is_better=False)
    assert exact["first_eval_step"] == 200 and exact["interpolated_s"] == pytest.approx(20.0)
    first = time_to_target(history, "eval_loss", 3.0, higher_is_better=False)
    assert first == {"first_eval_s": 10.0, "first_eval_step": 100, "interpolated_s": 10.0}
    assert time_to_target(history, "eval_loss", 1.0, higher_is_better=False) is None
    assert time_to_target([], "eval_loss", 1.0, higher_is_better=False) is None


def test_time_to_target_for_a_metric_that_rises_and_skips_non_finite_evaluations():
    history = _history([0.5, math.nan, 0.8, 0.95, 0.9], key="eval_accuracy")
    reached = time_to_target(history, "eval_accuracy", 0.9, higher_is_better=True)
    assert reached["first_eval_step"] == 400
    assert reached["interpolated_s"] == pytest.approx(30.0 + 10.0 * (0.9 - 0.8) / (0.95 - 0.8))
    for entry in history:
        entry["train_cpu_time"] = entry["train_time"] / 2
    on_cpu = time_to_target(history, "eval_accuracy", 0.9, higher_is_better=True, clock="train_cpu_time")
    assert on_cpu["first_eval_s"] == 20.0 and on_cpu["interpolated_s"] == pytest.approx(
        reached["interpolated_s"] / 2
    )
    # the NaN evaluation breaks the pair: a crossing right after it takes the evaluation's own time
    after_nan = time_to_target(history, "eval_accuracy", 0.7, higher_is_better=True)
    assert after_nan["first_eval_step"] == 300 and after_nan["interpolated_s"] == 30.0


def test_explicit_models_give_loss_and_logits():
    tokenizer = train_tokenizer("char", ["First Citizen: before we proceed any further, hear me speak."])
    gpt = explicit_gpt2(tokenizer, block_size=64)
    assert gpt.config.n_layer == 4 and gpt.config.n_embd == 128 and gpt.config.n_positions == 64
    assert gpt.config.resid_pdrop == gpt.config.embd_pdrop == gpt.config.attn_pdrop == 0.0
    ids = torch.randint(0, len(tokenizer), (2, 16))
    out = gpt(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 16, len(tokenizer)) and torch.isfinite(out.loss)
    cnn = ExplicitCNNForImageClassification(ExplicitCNNConfig(num_channels=1, image_size=8, num_labels=10))
    images, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 3, 9])
    out = cnn(pixel_values=images, labels=labels)
    assert out.logits.shape == (3, 10) and torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item())
    assert 140_000 < cnn.num_parameters() < 200_000  # of the order of mdeq-tiny-digits' 158,554


def test_both_families_on_tiny_budgets_print_the_tables_and_write_json(
    tmp_path, capsys, fresh_accelerate_state
):
    text = tmp_path / "input.txt"
    text.write_text("".join(f"Line {i}: to be, or not to be, that is the question.\n" for i in range(400)))
    out = tmp_path / "bench.json"
    argv = [
        "--train_file",
        str(text),
        "--max_train_steps",
        "4",
        "--eval_steps",
        "2",
        "--max_train_samples",
        "24",
    ]
    argv += [
        "--max_eval_samples",
        "8",
        "--lm_preset",
        "test_deq_transformer_tiny",
        "--mdeq_preset",
        "test_mdeq_tiny",
    ]
    argv += ["--torch_num_threads", "1", "--output_file", str(out)]
    load_script("benchmark_training").main(argv)
    printed = capsys.readouterr().out
    assert (
        "### lm: DEQ against the explicit model" in printed
        and "### mdeq: DEQ against the explicit model" in printed
    )
    assert (
        "GPT2LMHeadModel" in printed and "ResNet-style CNN" in printed and "## Targets (this run)" in printed
    )

    results = json.loads(out.read_text())
    assert set(results) == {"families", "targets", "settings", "total_time_s"}
    assert results["settings"]["torch_num_threads"] == 1
    for family, metric, shown in (
        ("lm", "eval_loss", "eval_perplexity"),
        ("mdeq", "eval_accuracy", "eval_accuracy"),
    ):
        result = results["families"][family]
        assert result["metric"] == metric and result["task_metric"] == shown
        runs = result["runs"]
        assert result["target"] == runs["explicit"][metric]
        for kind in ("explicit", "deq"):
            assert runs[kind]["train_steps"] == 4 and runs[kind]["torch_num_threads"] == 1
            steps = [h["step"] for h in runs[kind]["history"]]  # every 2 steps and at each epoch's end
            assert {2, 4} <= set(steps) and steps == sorted(set(steps)) and steps[-1] == 4
        assert runs["explicit"]["grad_estimator"] is None and runs["deq"]["grad_estimator"] == "upg"
        assert runs["explicit"]["eval_solver_nstep"] is None  # no solver: NaN in the results, null in JSON
        assert runs["deq"]["eval_solver_nstep"] >= 1
        params = runs["deq"]["num_parameters"] / runs["explicit"]["num_parameters"]
        assert result["parameter_ratio"] == pytest.approx(params)
        for clock, (history_key, total_key) in {
            "wall": ("train_time", "train_runtime"),
            "cpu": ("train_cpu_time", "train_cpu_runtime"),
        }.items():
            assert all(h[history_key] > 0 for h in runs["deq"]["history"])
            reached = time_to_target(
                runs["deq"]["history"], metric, result["target"], result["higher_is_better"], history_key
            )
            assert result["deq_time_to_target"][clock] == reached
            if reached is None:
                assert result["deq_time_to_target_ratio"][clock] is None
            else:
                ratio = reached["interpolated_s"] / runs["explicit"][total_key]
                assert result["deq_time_to_target_ratio"][clock] == pytest.approx(ratio)
    assert results["families"]["lm"]["runs"]["explicit"]["num_parameters"] > 800_000
    assert [t["clock"] for t in results["targets"]] == ["wall", "cpu"]
    assert all(isinstance(t["met"], bool) and "1/3" in t["target"] for t in results["targets"])

    before = out.read_text()
    with pytest.raises(SystemExit):
        load_script("benchmark_training").main(argv)
    assert "--overwrite_output_file" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--families", "lm,gpt"], "--families"),
        (["--families", "mdeq", "--torch_num_threads", "0"], "--torch_num_threads"),
        (["--families", "lm"], "--train_file"),
        (["--families", "mdeq", "--mdeq_preset", "deq-transformer-char"], "--preset"),
    ],
)
def test_a_bad_flag_is_one_error_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("benchmark_training").parse_args(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0]


def test_both_runs_of_a_family_share_the_machine_settings_and_the_evaluation(tmp_path):
    text = tmp_path / "input.txt"
    text.write_text("to be, or not to be\n" * 50)
    script = load_script("benchmark_training")
    flags = script.parse_args(["--train_file", str(text), "--torch_num_threads", "3"])
    assert flags.families == "lm,mdeq" and flags.family_list == ["lm", "mdeq"]
    for family, evaluation in (
        ("lm", ["--eval_steps", "200", "--max_eval_samples", "512"]),
        ("mdeq", ["--eval_steps", "15"]),
    ):
        deq, explicit = script.run_argvs(flags, family)
        for argv in (deq, explicit):
            assert argv[argv.index("--torch_num_threads") + 1] == "3"
            assert all(
                argv[argv.index(flag) + 1] == value for flag, value in zip(evaluation[::2], evaluation[1::2])
            )
            assert ("--max_eval_samples" in argv) == (family == "lm")
    deq, explicit = script.run_argvs(flags, "lm")
    assert (
        deq[:2] == ["--config", str(script.DEFAULT_LM_CONFIG)] and "--per_device_train_batch_size" in explicit
    )
    assert explicit[explicit.index("--per_device_train_batch_size") + 1] == "12"
