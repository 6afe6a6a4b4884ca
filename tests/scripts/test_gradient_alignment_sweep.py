"""``scripts/gradient_alignment_sweep.py``: on a tiny saved MDEQ, trained and at initialisation, on the data of
its training record; JSON + PNG written, never over existing outputs; bad input is one ``error:`` line."""

from __future__ import annotations

import json

import pytest
from script_loading import load_script
from tiny_runs import mdeq_args


def test_sweep_of_a_tiny_saved_model_trained_and_at_init(tmp_path, fresh_accelerate_state, capsys):
    out = tmp_path / "mdeq"
    load_script("train_mdeq_classifier").main(mdeq_args(out, steps=2))
    sweep = load_script("gradient_alignment_sweep")
    common = ["--model_name_or_path", str(out), "--steps", "1,4", "--dampings", "0.5,1"]
    data = ["--", "--per_device_eval_batch_size", "6"]
    trained = sweep.main([*common, "--output_file", str(tmp_path / "trained.json"), *data])
    assert "the training run's data flags" in capsys.readouterr().err  # the record's data: digits
    at_init = sweep.main([*common, "--at_init", "--output_file", str(tmp_path / "init.json"), *data])
    for summary, name in ((trained, "trained"), (at_init, "init")):
        assert json.loads((tmp_path / f"{name}.json").read_text()) == json.loads(json.dumps(summary))
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert summary["batch_size"] == 6 and summary["model_type"] == "mdeq"
        points = summary["points"]
        assert [(p["estimator"], p["steps"], p["damping"]) for p in points] == [
            (e, k, lam) for e in ("upg", "npg") for k in (1, 4) for lam in (0.5, 1.0)
        ]
        assert all(-1 <= p["cosine"] <= 1 and p["relative_error"] >= 0 for p in points)
    assert trained["points"] != at_init["points"] and at_init["at_init"]

    with pytest.raises(SystemExit) as exit_:  # the outputs exist: refused, nothing rewritten
        sweep.main([*common, "--output_file", str(tmp_path / "trained.json")])
    assert exit_.value.code == 2 and "--overwrite_output_file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--estimators", "upg,foo", "['upg', 'npg']"),
        ("--steps", "0,2", "integers >= 1"),
        ("--dampings", "0.5,1.5", "in (0, 1]"),
        ("--output_file", "x.txt", ".json"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, flag, value, expected):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")  # the checks of the flags come before any loading
    argv = [
        "--model_name_or_path",
        str(tmp_path / "m"),
        "--output_file",
        str(tmp_path / "o.json"),
        flag,
        value,
    ]
    with pytest.raises(SystemExit) as exit_:
        load_script("gradient_alignment_sweep").main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and flag in err[-1] and expected in err[-1] and "error:" in err[-1]
