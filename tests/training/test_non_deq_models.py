"""The loop's DEQ-specific pieces tolerate an explicit model: solver statistics of outputs without a solver are
NaN, and the estimator schedule has nothing to switch (and refuses an unrolled warm-up)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tiny_runs import tiny_model
from torch.utils.data import DataLoader

from benchmarks.against_explicit import ExplicitImageClassificationTask
from benchmarks.explicit_models import ExplicitCNNConfig, ExplicitCNNForImageClassification
from hf_deq.training import EVAL_KEYS, EstimatorSchedule, evaluate, solver_stats


def _cnn():
    torch.manual_seed(0)
    return ExplicitCNNForImageClassification(
        ExplicitCNNConfig(widths=[8, 16], blocks_per_stage=1, num_labels=10)
    )


def test_solver_stats_of_an_output_without_a_solver_are_nan():
    outputs = _cnn()(pixel_values=torch.randn(2, 1, 8, 8))
    for stats in (
        solver_stats(outputs),
        solver_stats(SimpleNamespace(solver_nstep=None, solver_residual=None)),
    ):
        assert set(stats) == {"solver_nstep", "solver_nstep_max", "solver_residual"}
        assert all(math.isnan(v) for v in stats.values())
    deq = solver_stats(
        SimpleNamespace(solver_nstep=torch.tensor([2, 4]), solver_residual=torch.tensor([0.1, math.inf]))
    )
    assert deq == {"solver_nstep": 3.0, "solver_nstep_max": 4.0, "solver_residual": pytest.approx(0.1)}


def test_evaluate_an_explicit_model(fresh_accelerate_state):
    from accelerate import Accelerator

    model = _cnn().eval()
    rows = [{"pixel_values": torch.randn(1, 8, 8), "labels": torch.tensor(i % 10)} for i in range(5)]
    accelerator = Accelerator(cpu=True)
    results = evaluate(model, accelerator.prepare(DataLoader(rows, batch_size=2)), accelerator, _task())
    assert set(results) == {*EVAL_KEYS, "eval_accuracy"} and results["eval_num_examples"] == 5
    assert math.isfinite(results["eval_loss"]) and math.isnan(results["eval_solver_nstep"])


def _task():
    task = ExplicitImageClassificationTask()
    from hf_deq.training import load_packaged_metric

    task.metric = load_packaged_metric("accuracy")
    return task


def test_estimator_schedule_does_nothing_for_an_explicit_model_and_refuses_a_warmup():
    model = _cnn()
    schedule = EstimatorSchedule(model, warmup_steps=0)
    assert not schedule.active and schedule.update(0) is False
    schedule.finish()
    with pytest.raises(ValueError, match="unrolled_warmup_steps 3"):
        EstimatorSchedule(model, warmup_steps=3)
    deq = tiny_model("mdeq", grad_estimator="upg")
    schedule = EstimatorSchedule(deq, warmup_steps=2)
    assert schedule.active and schedule.update(0) and deq.config.grad_estimator == "unrolled"
    assert schedule.update(2) and deq.config.grad_estimator == "upg"
