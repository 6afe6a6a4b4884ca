"""``scripts/benchmark_solver_ops.py``: operator counts per solver iteration and step times per engine variant,
on the tiny test preset (2 evaluations; dynamo's ``eager`` backend for the compiled variants: seconds, not
inductor's minutes)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from script_loading import load_script
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks import solve_setup
from benchmarks.op_counts import SOLVERS, count_dispatches
from benchmarks.solve_setup import F_RANGE, SOLVE_RANGE

N_A = "n/a: compile_solve not available"


def test_count_dispatches_counts_top_level_ops_inside_and_outside_f_and_host_syncs():
    x, w = torch.randn(4, 3), torch.randn(2, 3)
    torch.add(x, 1)  # outside the solve range: not counted
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.add(x, 1)
        with record_function(SOLVE_RANGE):
            with record_function(F_RANGE):
                F.linear(x, w)  # one op (aten::linear), not again for the ops it calls
                torch.relu(x)
            torch.mul(x, 2)
            bool(x.sum() > 0)  # sum, gt, and one host sync (is_nonzero -> item -> _local_scalar_dense)
    counts = count_dispatches(prof.events())
    assert counts == {"inside_f": 2, "outside_f": 4, "total": 6, "host_syncs": 1}


def test_benchmark_prints_and_writes_counts_and_step_times(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        solve_setup, "compile_solve_unavailable", lambda: N_A
    )  # the n/a column, on any engine
    out = tmp_path / "ops.json"
    argv = ["--presets", "test_deq_transformer_tiny", "--variants", "eager,compile_cell,compile_solve"]
    argv += ["--compile_backend", "eager", "--max_iter", "2", "--batch_size", "2", "--seq_len", "6"]
    argv += ["--rounds", "1", "--block_steps", "1", "--warmup_steps", "1", "--repeats", "1"]
    results = load_script("benchmark_solver_ops").main([*argv, "--output_file", str(out)])
    printed = capsys.readouterr().out
    assert "### Operators per evaluation of f" in printed and "### Training step" in printed
    assert "### Solver overhead per evaluation of f" in printed and N_A in printed
    assert json.loads(out.read_text()) == results
    assert set(results) == {"settings", "ops", "step", "total_time_s"}

    rows = {(r["solver"], r["variant"]): r for r in results["ops"]}
    assert set(rows) == {(s, v) for s in SOLVERS for v in ("eager", "compile_cell", "compile_solve")}
    for solver in SOLVERS:
        assert rows[solver, "compile_solve"]["skipped"] == N_A
        for variant in ("eager", "compile_cell"):
            row = rows[solver, variant]
            assert row["nfev"] == 2
            assert row["nfev_long"] == 4  # the steady figures come from a second solve of twice the budget
            for counts in (row["counts"], row["counts_long"]):
                assert all(isinstance(n, int) and n > 0 for n in counts.values()), counts
                assert counts["inside_f"] + counts["outside_f"] == counts["total"]
            assert row["per_eval"]["total"] == row["counts"]["total"] / 2
            extra = row["counts_long"]["total"] - row["counts"]["total"]
            assert row["per_iteration"]["total"] == extra / 2 > 0
        # the compiled cell's calls count as f, the solver's bookkeeping is the same eager code
        assert (
            rows[solver, "compile_cell"]["counts"]["outside_f"]
            == rows[solver, "eager"]["counts"]["outside_f"]
        )

    (entry,) = results["step"]["steps"]
    steps = {r["variant"]: r for r in entry["rows"]}
    assert steps["eager"]["step_ms"] > 0 and steps["compile_cell"]["step_ms"] > 0
    assert steps["compile_cell"]["compile_s"] > 0 and steps["compile_solve"]["skipped"] == N_A
    overheads = [r for r in results["step"]["overheads"] if "skipped" not in r]
    assert {(r["solver"], r["variant"]) for r in overheads} == {
        (s, v) for s in ("anderson", "broyden") for v in ("eager", "compile_cell")
    }
    assert all(r["solve_ms"] > 0 and r["f_ms_per_eval"] > 0 and r["nfev"] == 2 for r in overheads)

    with pytest.raises(SystemExit):  # an existing result is kept
        load_script("benchmark_solver_ops").main([*argv, "--output_file", str(out)])
    assert "--overwrite_output_file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--variants", "eager,jit"], "--variants"),
        (["--solvers", "newton"], "--solvers"),
        (["--rounds", "0"], "--rounds"),
    ],
)
def test_bad_arguments_name_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("benchmark_solver_ops").parse_args(argv)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_compile_solve_rows_count_the_fused_step_as_a_whole(capsys):
    if solve_setup.compile_solve_unavailable() is not None:
        pytest.skip("this engine has no compile_solve")
    argv = ["--mode", "ops", "--presets", "test_deq_transformer_tiny", "--variants", "eager,compile_solve"]
    argv += ["--solvers", "anderson", "--compile_backend", "eager", "--max_iter", "2", "--batch_size", "2"]
    results = load_script("benchmark_solver_ops").main([*argv, "--seq_len", "6"])
    eager, fused = results["ops"]
    assert fused["variant"] == "compile_solve" and fused["nfev"] == 2
    assert fused["per_eval"]["inside_f"] is None and fused["per_iteration"]["outside_f"] is None
    assert fused["counts"]["total"] > 0 and fused["counts"]["inside_f"] == 0  # f is traced into the step
    assert isinstance(fused["target_met"], bool) and eager["target_met"] is None
    assert "<= 20: " in capsys.readouterr().out
