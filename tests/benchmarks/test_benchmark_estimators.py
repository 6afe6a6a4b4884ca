"""``scripts/benchmark_estimators.py`` runs on its smallest settings and writes every number as JSON."""

from __future__ import annotations

import json
import math

import pytest
from script_loading import load_script

from benchmarks.engines import FORWARD_SOLVERS, MEMORY_BUDGETS, our_estimators


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_benchmark_writes_json_and_keeps_an_existing_file(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--cells", "transformer", "--quick", "--batch_size", "1", "--torch_num_threads", "1"]
    load_script("benchmark_estimators").main([*argv, "--output_file", str(out)])
    printed = capsys.readouterr().out
    assert "### transformer: forward solve" in printed and "## Targets (this run)" in printed

    results = json.loads(out.read_text())
    assert set(results) == {"settings", "cells", "targets", "total_time_s"}
    assert results["settings"]["torch_num_threads"] == 1 and results["settings"]["torchdeq_version"] is None
    cell = results["cells"]["transformer"]
    assert cell["batch_size"] == 1 and cell["state_dim"] == 64 * 128
    assert [r["solver"] for r in cell["forward"]["rows"]] == list(FORWARD_SOLVERS)
    for row in cell["forward"]["rows"]:
        assert row["solve_ms"] > 0 and row["nfev"] > 0 and row["f_ms_in_solve"] > 0
        assert row["reached_tol"] and row["rel_residual"] <= 1e-3 and row["peak_mib"] > 0
        assert row["time_vs_torchdeq"] is None  # torchdeq was not compared
    assert [r["estimator"] for r in cell["estimators"]["rows"]] == list(our_estimators())
    for row in cell["estimators"]["rows"]:
        assert row["backward_ms"] > 0 and row["backward_passes"] >= 1 and row["train_step_peak_mib"] > 0
        if row["estimator"].startswith("implicit"):
            assert row["jtv_products"] >= 1 and row["backward_rel_residual"] <= 1e-6
    assert all(r > 1 for r in cell["estimators"]["ratios"].values())  # implicit costs more than upg / npg
    for row in cell["memory"]["rows"]:
        assert set(row["peak_mib_by_max_iter"]) == {str(b) for b in MEMORY_BUDGETS}
        assert row["change_pct"] is not None
    targets = {r["target"]: r for r in results["targets"]}
    assert "anderson overhead per f evaluation < 10%" in targets
    assert all(r["cell"] == "transformer" and isinstance(r["met"], bool) for r in results["targets"])
    numbers = list(_numbers(results))
    assert numbers and all(math.isfinite(x) for x in numbers)

    before = out.read_text()
    with pytest.raises(SystemExit):
        load_script("benchmark_estimators").main([*argv, "--output_file", str(out)])
    assert "--overwrite_output_file" in capsys.readouterr().err and out.read_text() == before
