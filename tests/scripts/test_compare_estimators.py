"""``scripts/compare_estimators.py`` and its library ``benchmarks.estimator_comparison``: the aggregation
over seeds (mean ± sample std, time to the reference's final metric, 'not reached'), and tiny end-to-end
comparisons of both families (2 seeds, 2 estimators, 2 steps, in-process)."""

from __future__ import annotations

import json
import math

import pytest
from script_loading import load_script
from tiny_runs import family_args

from benchmarks import estimator_comparison as ec

ACCURACY = ec.METRICS["image-classification"]
LOSS = ec.METRICS["causal-lm"]


def run(value: float, history: list[tuple[float, float]], **extra) -> dict:
    """A synthetic ``train`` result: final ``value`` of both metrics, ``history`` of ``(train_time, value)``."""
    return {
        "eval_accuracy": value,
        "eval_loss": value,
        "train_runtime": history[-1][0] if history else 10.0,
        "train_steps": 10,
        "forward_time_per_step": 0.25,
        "backward_time_per_step": 0.5,
        "history": [
            {"step": 5 * (i + 1), "train_time": t, "eval_accuracy": v, "eval_loss": v}
            for i, (t, v) in enumerate(history)
        ],
        **extra,
    }


def test_stat_is_the_mean_and_the_sample_std():
    stat = ec.Stat.of([1.0, 2.0, 4.0])
    assert stat.n == 3 and stat.mean == pytest.approx(7 / 3)
    assert stat.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert stat.show(digits=2) == f"2.33 ± {stat.std:.2f}"
    one = ec.Stat.of([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and one.show(100, 1, "%") == "50.0%"
    assert ec.Stat.of([]).show() == "n/a"


def test_time_to_target_is_the_first_evaluation_at_or_better_than_the_target():
    history = run(0.9, [(1.0, 0.5), (2.0, 0.8), (3.0, 0.95), (4.0, 0.9)])["history"]
    assert ec.time_to_target(history, ACCURACY, 0.8) == 2.0  # at the target counts, no interpolation
    assert ec.time_to_target(history, ACCURACY, 0.81) == 3.0
    assert ec.time_to_target(history, ACCURACY, 0.96) is None
    losses = run(1.5, [(1.0, 3.0), (2.0, 2.0), (3.0, 1.4), (4.0, 1.5)])["history"]
    assert ec.time_to_target(losses, LOSS, 2.0) == 2.0  # lower is better
    assert ec.time_to_target(losses, LOSS, 1.5) == 3.0
    assert ec.time_to_target(losses, LOSS, 1.3) is None


def test_summary_targets_the_reference_mean_and_counts_the_runs_that_reach_it():
    runs = {
        "implicit": [run(0.8, [(10.0, 0.6), (20.0, 0.8)]), run(0.9, [(12.0, 0.7), (22.0, 0.9)])],
        "upg": [run(0.9, [(4.0, 0.86), (8.0, 0.9)]), run(0.8, [(5.0, 0.7), (9.0, 0.8)])],
        "npg": [run(0.5, [(3.0, 0.4), (6.0, 0.5)]), run(0.6, [(3.0, 0.5), (7.0, 0.6)])],
    }
    summary = ec.summarize(runs, ACCURACY)
    assert summary["target"] == pytest.approx(0.85) and summary["reference_runtime"] == pytest.approx(21.0)
    implicit, upg, npg = (summary["estimators"][k] for k in ("implicit", "upg", "npg"))
    assert implicit["final"].mean == pytest.approx(0.85) and implicit["final"].std == pytest.approx(0.0707107)
    assert implicit["time_to_target_runs"] == [None, 22.0] and implicit["reached"] == 1
    assert upg["time_to_target_runs"] == [4.0, None] and upg["time_to_target"].mean == 4.0
    assert npg["reached"] == 0 and npg["time_to_target"].n == 0
    assert upg["fwd_bwd_per_step"].mean == pytest.approx(0.75) and upg["wall_per_step"].mean == pytest.approx(
        0.85
    )
    assert upg["curve"]["step"] == [5, 10] and upg["curve"]["time"] == pytest.approx([4.5, 8.5])
    assert upg["curve"]["value"] == pytest.approx([0.78, 0.85])
    table = ec.markdown_table(summary, ACCURACY, ec.labels("image-classification"))
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| 85.00 ± 7.07% |" in rows["| implicit"]
    assert "| 4 s (0.19x), 1/2 runs |" in rows["| UPG (k=5, λ=0.5)"]
    assert rows["| NPG (k=5, λ=0.5)"].endswith("| not reached |")
    assert "| 2 |" in rows["| NPG (k=5, λ=0.5)"] and "| 750 ± 0 | 650 ± 71 |" in rows["| NPG (k=5, λ=0.5)"]
    json.dumps(ec.jsonable(summary))  # NaN-free and serialisable


def test_lower_is_better_and_tolerance_moves_the_target_towards_worse():
    runs = {
        "implicit": [run(2.0, [(5.0, 3.0), (10.0, 2.0)])],
        "one_step": [run(2.1, [(2.0, 2.5), (4.0, 2.1)])],
    }
    assert ec.summarize(runs, LOSS)["estimators"]["one_step"]["reached"] == 0
    loose = ec.summarize(runs, LOSS, tolerance=0.1)
    assert loose["target"] == pytest.approx(2.1) and loose["estimators"]["one_step"][
        "time_to_target_runs"
    ] == [4.0]
    table = ec.markdown_table(loose, LOSS, ec.labels("causal-lm"))
    assert "| one-step | 1 | 2.100 |" in table and "| 4 s (0.40x) |" in table
    assert "UPG (k=5, λ=0.8)" in ec.labels("causal-lm").values()


def test_recipes_and_seeds():
    assert ec.recipes("causal-lm")["upg"] == [
        "--grad_estimator",
        "upg",
        "--grad_steps",
        "5",
        "--grad_damping",
        "0.8",
    ]
    assert ec.recipes("image-classification")["npg"][-1] == "0.5"
    assert ec.parse_seeds("0,1, 2") == [0, 1, 2]
    for bad in ("", "0,x", "1,1", "-1"):
        with pytest.raises(ValueError):
            ec.parse_seeds(bad)


def _without(argv: list[str], *flags: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mdeq", "lm"])
def test_two_seeds_two_estimators_write_the_table_the_plot_and_the_runs(
    family, tmp_path, fresh_accelerate_state, monkeypatch
):
    compare = load_script("compare_estimators")
    task = {"mdeq": "image-classification", "lm": "causal-lm"}[family]
    train_args = _without(
        family_args(family, tmp_path / "unused", tmp_path, steps=2), "--output_dir", "--seed"
    )
    out = tmp_path / "compare"
    argv = ["--task", task, "--output_dir", str(out), "--seeds", "0,1", "--estimators", "implicit", "upg"]
    result = compare.main([*argv, "--in_process", "--", *train_args, "--eval_steps", "1"])
    runs, summary = result["runs"], result["summary"]
    assert [r["seed"] for r in runs["upg"]] == [0, 1] and runs["implicit"][1]["train_steps"] == 2
    assert [r["grad_estimator"] for r in runs["upg"]] == ["upg", "upg"]
    assert (
        runs["upg"][0]["saved_activations_mb"] > runs["implicit"][0]["saved_activations_mb"]
    )  # k unrolled calls
    metric = ec.METRICS[task]
    finals = [r[metric.key] for r in runs["implicit"]]
    assert summary["target"] == pytest.approx(sum(finals) / 2)
    assert summary["estimators"]["upg"]["curve"]["step"] == [1, 2]
    table = (out / "compare_estimators.md").read_text()
    assert "| implicit | 2 |" in table and f"UPG (k=5, λ={ec.PHANTOM_SETTINGS[task][1]}) | 2 |" in table
    assert "±" in table and f"final {metric.key}" in table
    assert (out / "compare_estimators.png").stat().st_size > 1000
    saved = json.loads((out / "compare_estimators.json").read_text())
    assert saved["summary"]["estimators"]["implicit"]["final"]["n"] == 2
    assert (out / "upg-seed1" / "all_results.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("--skip_existing retrained a finished run")

    monkeypatch.setattr(compare, "train", no_training)
    again = compare.main([*argv, "--in_process", "--skip_existing", "--", *train_args, "--eval_steps", "1"])
    assert again["runs"]["upg"][1][metric.key] == runs["upg"][1][metric.key]

    # An earlier comparison is never replaced without asking.
    with pytest.raises(SystemExit) as exit_info:
        compare.main([*argv, "--in_process", "--", *train_args, "--eval_steps", "1"])
    assert exit_info.value.code == 2
    assert table == (out / "compare_estimators.md").read_text()


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["--seeds", "0,zero"], "--seeds", "integers"),
        (["--tolerance", "-1"], "--tolerance", ">= 0"),
        (["--", "--seed", "3"], "--seed", "set per run"),
        (["--task", "causal-lm", "--", "--block_size", "1"], "--block_size", "at least 2"),
    ],
)
def test_a_bad_flag_is_one_error_line(argv, flag, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("compare_estimators").main(["--output_dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"argument {flag}:" in lines[0] and fragment in lines[0], lines
