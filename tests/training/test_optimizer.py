"""One weight-decay rule for every task: matrices and kernels decay (linear, convolution, embedding weights and
weight-norm directions); biases, norm scales and weight-norm gains do not; tied weights appear once."""

from __future__ import annotations

import argparse

import pytest
import torch
from tiny_runs import tiny_model
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from hf_deq.training import build_optimizer, parameter_groups
from hf_deq.training.optimizer import decays


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 10)
        self.linear.weight = self.embed.weight  # tied
        self.conv = weight_norm(nn.Conv2d(4, 4, 3))
        self.layer_norm = nn.LayerNorm(4)
        self.batch_norm = nn.BatchNorm2d(4)
        self.group_norm = nn.GroupNorm(2, 4)


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_the_rule_on_every_kind_of_parameter():
    model = _Mixed()
    decayed, kept = parameter_groups(model, weight_decay=0.1)
    assert (decayed["weight_decay"], kept["weight_decay"]) == (0.1, 0.0)
    assert _names(model, decayed) == {"embed.weight", "conv.parametrizations.weight.original1"}
    assert _names(model, kept) == {
        "linear.bias",
        "conv.bias",
        "conv.parametrizations.weight.original0",  # the weight-norm gain: 4-D, but a scale
        "layer_norm.weight",
        "layer_norm.bias",
        "batch_norm.weight",
        "batch_norm.bias",
        "group_norm.weight",
        "group_norm.bias",
    }
    total = sum(len(g["params"]) for g in (decayed, kept))
    assert total == len(list(model.parameters()))  # the tied weight once


@pytest.mark.parametrize("kind", ["mdeq", "lm", "lm_adaptive"])
def test_every_trainable_parameter_of_each_family_is_in_exactly_one_group(kind):
    model = tiny_model(kind)
    decayed, kept = parameter_groups(model, weight_decay=0.1)
    ids = [id(p) for g in (decayed, kept) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    for name in _names(model, decayed):
        assert not name.endswith(("bias", "original0")) and "norm" not in name.split(".")[-2:][0], name
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert decays("x.weight", torch.nn.Parameter(torch.ones(2, 2)))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_optimiser_gets_both_groups(name):
    args = argparse.Namespace(
        optimizer=name, learning_rate=0.1, weight_decay=0.01, momentum=0.9, nesterov=True,
        adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8,
    )  # fmt: skip
    optimizer = build_optimizer(args, _Mixed())
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert type(optimizer).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[name]
