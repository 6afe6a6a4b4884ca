"""``scripts/benchmark_compile_cell.py`` times eager and compiled training steps side by side and reports no
recompiles in the timed steps (``aot_eager`` backend and the tiny preset: seconds, not inductor's minutes)."""

from __future__ import annotations

import json

from script_loading import load_script


def test_benchmark_compile_cell_reports_both_step_times(tmp_path, capsys):
    out = tmp_path / "compile.json"
    argv = ["--presets", "test_deq_transformer_tiny", "--compile_backend", "aot_eager", "--steps", "2"]
    argv += ["--warmup_steps", "2", "--batch_size", "2", "--seq_len", "6", "--output_file", str(out)]
    (row,) = load_script("benchmark_compile_cell").main(argv)
    assert row["eager_step_ms"] > 0 and row["compiled_step_ms"] > 0 and row["compile_s"] > 0
    assert row["graphs_compiled_in_timed_steps"] == 0
    assert json.loads(out.read_text()) == [row]
    assert "| test_deq_transformer_tiny | upg" in capsys.readouterr().out
