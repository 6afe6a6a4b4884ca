"""Evaluation: the fixed ``eval_*`` keys for every task, every example counted once, and an ``eval_loss`` that is
exact whatever the batching: the per-example losses (token sums and counts for a language model, also for the
adaptive-softmax LM whose outputs have ``logits=None`` given labels) reproduce the loss of one forward over the
whole split."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_runs import tiny_inputs, tiny_model
from torch.utils.data import DataLoader

from hf_deq.tasks import get_task
from hf_deq.training import EVAL_KEYS, evaluate

TASKS = {"mdeq": "image-classification", "lm": "causal-lm", "lm_adaptive": "causal-lm"}


@pytest.mark.parametrize("kind", list(TASKS))
def test_keys_count_and_exact_loss(kind, fresh_accelerate_state):
    from accelerate import Accelerator

    model = tiny_model(kind, solver_tol=0.0).eval()  # tol 0: every sample runs the same iterations, any batch
    inputs = tiny_inputs(kind, model.config, batch=7, seed=1)
    if kind != "mdeq":  # sequences with different numbers of predicted tokens: a batch mean would be off
        for i in range(7):
            inputs["labels"][i, : min(i, 4)] = -100
    rows = [{k: v[i] for k, v in inputs.items()} for i in range(7)]
    task = get_task(TASKS[kind])
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(rows, batch_size=3))  # batches of 3, 3 and 1
    results = evaluate(model, loader, accelerator, task)
    assert set(results) == {*EVAL_KEYS, f"eval_{task.metric_name}"}
    assert results["eval_num_examples"] == 7
    assert model.training  # evaluation hands the model back in training mode
    model.eval()
    with torch.no_grad():
        reference = model(**inputs)  # one forward over the whole split
    assert results["eval_loss"] == pytest.approx(float(reference.loss), rel=1e-5)
    assert results["eval_solver_nstep_max"] >= results["eval_solver_nstep"] >= 1
    if kind == "mdeq":
        accuracy = float((reference.logits.argmax(-1) == inputs["labels"]).float().mean())
        assert results["eval_accuracy"] == pytest.approx(accuracy)
    else:
        assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    if kind == "lm_adaptive":  # an independent reference: the full log-probabilities of the head
        with torch.no_grad():
            log_probs = model(input_ids=inputs["input_ids"]).logits
        labels = inputs["labels"][:, 1:]
        picked = log_probs[:, :-1].gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        nll = -picked[labels != -100].mean()
        assert results["eval_loss"] == pytest.approx(float(nll), rel=1e-5)
