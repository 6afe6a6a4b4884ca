"""The budget sweep saved with a model (``budget_sweep.json`` + ``budget_sweep.png``): the card's "how much compute
at inference" table and plot, escaping, and the push staging both files."""

from __future__ import annotations

import json

import pytest

import hf_deq
from hf_deq import hub
from hf_deq.hub.budget_sweep import (
    BUDGET_SWEEP_FILE,
    BUDGET_SWEEP_PLOT,
    plot_budget_sweep,
    read_budget_sweep,
    write_budget_sweep,
)

ROWS = [
    {"solver": "anderson", "budget": b, "metric_name": "accuracy", "metric": m, "loss": 1.0 / b}
    | {"solver_nstep": float(b), "solver_residual": 0.5 / b, "num_examples": 24, "seconds": 0.024 * b}
    for b, m in ((2, 0.25), (8, 0.875))
]


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "tiny"
    hf_deq.create_model("test_mdeq_tiny", solver_on_failure="ignore").save_pretrained(folder)
    return folder


def card_of(folder) -> str:
    return hub.render_model_card(folder, solver_stats={"solver_nstep_mean": 3.0, "source": "test"})


def test_the_card_shows_the_sweep_table_and_plot_and_push_stages_them(model_dir, tmp_path):
    assert "How much compute at inference" not in card_of(model_dir)
    write_budget_sweep(model_dir, ROWS, device="cpu, 1 thread(s) x 1 process(es)")
    assert plot_budget_sweep(ROWS, model_dir / BUDGET_SWEEP_PLOT)
    assert (model_dir / BUDGET_SWEEP_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = card_of(model_dir)
    assert "## How much compute at inference" in card
    assert "| anderson | 2 | 25.00% | 0.5000 | 2.0 | 2.50e-01 | 2.00 |" in card
    assert "| anderson | 8 | 87.50% | 0.1250 | 8.0 | 6.25e-02 | 8.00 |" in card
    assert f"]({BUDGET_SWEEP_PLOT})" in card and "timed on cpu, 1 thread(s) x 1 process(es)" in card
    staged = hub.stage_model_dir(model_dir, tmp_path / "staged", card=card)
    assert {BUDGET_SWEEP_FILE, BUDGET_SWEEP_PLOT} <= set(staged)


def test_without_the_plot_the_card_shows_the_table_only(model_dir):
    write_budget_sweep(model_dir, ROWS, device="cpu")
    card = card_of(model_dir)
    assert "| anderson | 8 | 87.50% |" in card and BUDGET_SWEEP_PLOT not in card


def test_sweep_text_is_escaped_and_a_broken_file_is_ignored(model_dir):
    rows = [dict(ROWS[0], solver="<img src=x onerror=alert(1)>", metric_name="perplexity")]
    write_budget_sweep(model_dir, rows, device="[link](http://evil)")
    card = card_of(model_dir)
    assert "<img src=x" not in card and "[link](http://evil)" not in card
    for broken in ("not json", json.dumps({"rows": [{"solver": "x"}]}), json.dumps([1, 2])):
        (model_dir / BUDGET_SWEEP_FILE).write_text(broken)
        assert read_budget_sweep(model_dir) is None
        assert "How much compute at inference" not in card_of(model_dir)
