"""The model pieces both families share (``hf_deq.modeling_utils``): weight-norm initialisation, the parameter
count, the task losses through ``model.loss_function``, gradient accumulation's ``num_items_in_batch`` and the
Jacobian term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import tiny_inputs, tiny_model
from torch import nn
from torch.nn.utils import parametrize

from hf_deq.deq import apply_weight_norm
from hf_deq.modeling_utils import accumulation_share, add_jacobian_loss, count_parameters, init_weight_norm_


def _distinct_storage_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Independent reference: parameter values counted once per storage, every registration walked."""
    storages = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad or not trainable_only:
            storages[param.untyped_storage().data_ptr()] = param.numel()
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["mdeq", "lm", "lm_adaptive"])
def test_count_parameters_counts_every_parameter_once(kind):
    model = tiny_model(kind)
    expected = _distinct_storage_count(model)
    with_repeats = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    if kind.startswith("lm"):
        assert with_repeats > expected  # the LM head is tied to the embedding: counting it twice is wrong
    assert count_parameters(model) == expected == model.num_parameters()
    buffers = sum(b.numel() for b in model.buffers())
    if kind == "mdeq":
        assert buffers > 0 and count_parameters(model) == expected  # BatchNorm statistics are not parameters


def test_count_parameters_trainable_only():
    model = tiny_model("lm")
    for param in model.model.block.parameters():
        param.requires_grad_(False)
    frozen = sum(p.numel() for p in model.model.block.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen
    assert count_parameters(model, trainable_only=True) == _distinct_storage_count(model, trainable_only=True)


@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(3, 4, 3)], ids=["linear", "conv"])
def test_weight_norm_initialisation_starts_at_the_initialised_direction(layer):
    torch.manual_seed(0)
    apply_weight_norm(layer)
    init_weight_norm_(layer, lambda w: nn.init.normal_(w, std=0.3))
    direction = layer.parametrizations.weight.original1
    torch.testing.assert_close(layer.weight, direction)  # g = ||v||: w = g v / ||v|| = v
    assert direction.std().item() == pytest.approx(0.3, rel=0.5)
    plain = nn.Linear(6, 5)
    init_weight_norm_(plain, nn.init.zeros_)
    assert not parametrize.is_parametrized(plain) and not plain.weight.any()


def test_add_jacobian_loss():
    loss, jac = torch.tensor(2.0), torch.tensor(3.0)
    assert add_jacobian_loss(loss, None, 0.5) is loss
    assert add_jacobian_loss(loss, jac, 0.0) is loss
    assert float(add_jacobian_loss(loss, jac, 0.5)) == 3.5
    assert float(add_jacobian_loss(loss, jac, 0.5, share=accumulation_share(torch.tensor(3), 12))) == 2.375


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_loss_function_can_be_replaced_as_in_transformers(kind):
    model = tiny_model(kind).eval()
    inputs = tiny_inputs(kind, model.config)
    calls = []

    def custom(**kwargs):
        calls.append(sorted(kwargs))
        return torch.tensor(7.0)

    model.loss_function = custom
    with torch.no_grad():
        assert float(model(**inputs).loss) == 7.0
    expected = (
        ["config", "labels", "pooled_logits"]
        if kind == "mdeq"
        else ["labels", "logits", "num_items_in_batch", "vocab_size"]
    )
    assert calls == [expected]


def test_lm_loss_with_num_items_in_batch_is_the_sum_over_it():
    model = tiny_model("lm").eval()
    inputs = tiny_inputs("lm", model.config, batch=4)
    inputs["labels"][1, 3] = -100
    with torch.no_grad():
        out = model(**inputs, num_items_in_batch=torch.tensor(40))
    logits, labels = (
        out.logits[:, :-1].reshape(-1, model.config.vocab_size),
        inputs["labels"][:, 1:].reshape(-1),
    )
    expected = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") / 40
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(
    "problem_type", ["single_label_classification", "regression", "multi_label_classification"]
)
def test_image_classifier_loss_with_num_items_in_batch_is_the_sum_over_it(problem_type):
    num_labels = 1 if problem_type == "regression" else 3
    model = tiny_model("mdeq", num_labels=num_labels, problem_type=problem_type).eval()
    inputs = tiny_inputs("mdeq", model.config, batch=4)
    g = torch.Generator().manual_seed(1)
    if problem_type == "regression":
        inputs["labels"] = torch.rand(4, generator=g)
    elif problem_type == "multi_label_classification":
        inputs["labels"] = (torch.rand(4, 3, generator=g) > 0.5).float()
    else:
        inputs["labels"][2] = -100
    with torch.no_grad():
        mean = model(**inputs).loss
        out = model(**inputs, num_items_in_batch=torch.tensor(10))
    logits, labels = out.logits.float(), inputs["labels"]
    if problem_type == "regression":
        total = F.mse_loss(logits.view(-1), labels, reduction="sum")
        torch.testing.assert_close(mean, total / 4)
    elif problem_type == "multi_label_classification":
        total = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        torch.testing.assert_close(mean, total / 12)
    else:
        total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        torch.testing.assert_close(mean, total / 3)
    torch.testing.assert_close(out.loss, total / 10)


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_jacobian_term_takes_this_batchs_share_under_gradient_accumulation(kind):
    model = tiny_model(kind, jacobian_reg_weight=0.5).train()
    inputs = tiny_inputs(kind, model.config, batch=4)
    items = 4 if kind == "mdeq" else inputs["labels"][:, 1:].numel()
    torch.manual_seed(3)
    plain = model(**inputs)
    torch.manual_seed(3)
    accumulated = model(**inputs, num_items_in_batch=torch.tensor(3 * items))
    assert plain.jacobian_loss is not None and plain.jacobian_loss > 0
    torch.testing.assert_close(accumulated.jacobian_loss, plain.jacobian_loss)
    task_loss = plain.loss - 0.5 * plain.jacobian_loss
    torch.testing.assert_close(accumulated.loss, (task_loss + 0.5 * plain.jacobian_loss) / 3)
