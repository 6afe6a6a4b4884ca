"""``scripts/benchmark_adaptive_head.py`` runs (on the tiny adaptive preset) and prints its table."""

from __future__ import annotations

from script_loading import load_script


def test_benchmark_adaptive_head_prints_both_heads(capsys):
    rows = load_script("benchmark_adaptive_head").main(
        ["--preset", "test_deq_transformer_tiny_adaptive", "--batch", "2", "--seq_len", "8", "--repeats", "1"]
    )
    plain, adaptive = rows.values()
    assert adaptive["parameters"] < plain["parameters"]
    assert all(r["seconds"] > 0 and r["peak_mib"] > 0 for r in rows.values())
    out = capsys.readouterr().out
    assert "| plain tied embedding |" in out and "adaptive / plain: parameters" in out
