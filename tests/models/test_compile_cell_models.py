"""``compile_cell=True`` on both model families (tiny presets, float64): training steps give the eager losses,
logits and gradients for every estimator, compile in the first step only, and the config field is validated.

The models compile with the ``aot_eager`` backend here: Dynamo's capture, its guards (which decide recompiles)
and AOTAutograd's forward/backward graphs are those of inductor, without inductor's minutes of C++ compilation
of these cells on a 2-core CI machine (``tests/deq/test_compile_cell_engine.py`` runs inductor on a small cell).
``HF_DEQ_TEST_COMPILE_BACKEND=inductor`` runs these tests with inductor.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from tiny_runs import ESTIMATORS, tiny_inputs
from torch._dynamo.utils import counters

import hf_deq
from hf_deq import DEQConfigError, create_config
from hf_deq.deq import CompiledCell

BACKEND = os.environ.get("HF_DEQ_TEST_COMPILE_BACKEND", "aot_eager")
PRESETS = {
    "mdeq": ("test_mdeq_tiny", hf_deq.MDEQForImageClassification),
    "lm": ("test_deq_transformer_tiny", hf_deq.DEQTransformerForCausalLM),
    "lm_post": ("test_deq_transformer_tiny_post", hf_deq.DEQTransformerForCausalLM),  # weight norm, dropout
}


def pair(kind: str, **overrides):
    """An eager model in float64 and its copy with a compiled cell."""
    preset, cls = PRESETS[kind]
    torch.manual_seed(0)
    config = create_config(preset, solver_on_failure="ignore", solver_tol=1e-8, grad_steps=3, **overrides)
    eager = cls(config).double().train()
    compiled = copy.deepcopy(eager)
    compiled.set_solver(config.solver, compile_cell=True)
    assert compiled.config.compile_cell and all(layer.compile_cell for layer in compiled.deq_layers())
    for layer in compiled.deq_layers():
        layer.compiled_cell = CompiledCell({"backend": BACKEND})
    return eager, compiled


def step(model, inputs, seed: int) -> dict:
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks and Jacobian probes in both models
    before = counters["stats"]["unique_graphs"]
    outputs = model(**inputs)
    outputs.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {
        "loss": outputs.loss.detach(),
        "logits": outputs.logits.detach(),
        "grads": grads,
        "new_graphs": counters["stats"]["unique_graphs"] - before,
    }


def check_equal(eager: dict, compiled: dict, what: str) -> None:
    """Logits to float64 precision; the loss and so every gradient to float32's, since the heads compute the
    loss in float32 (one flipped last bit of a logit's float32 copy moves a gradient by ~1e-7 relative)."""
    torch.testing.assert_close(
        compiled["loss"], eager["loss"], rtol=1e-6, atol=1e-8, msg=lambda m: f"loss, {what}: {m}"
    )
    torch.testing.assert_close(
        compiled["logits"], eager["logits"], rtol=1e-9, atol=1e-10, msg=lambda m: f"logits, {what}: {m}"
    )
    assert compiled["grads"].keys() == eager["grads"].keys(), what
    for name, grad in eager["grads"].items():
        torch.testing.assert_close(
            compiled["grads"][name],
            grad,
            rtol=1e-5,
            atol=1e-8,
            msg=lambda m, name=name: f"{name}, {what}: {m}",
        )


def inputs_for(kind: str, config) -> dict:
    inputs = tiny_inputs("mdeq" if kind == "mdeq" else "lm", config, batch=4)
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


@pytest.mark.parametrize("kind", list(PRESETS))
def test_compiled_training_steps_equal_eager_and_do_not_recompile(kind):
    eager, compiled = pair(kind)
    inputs = inputs_for(kind, eager.config)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (eager, compiled)]
    for estimator in ESTIMATORS:
        for model in (eager, compiled):
            model.set_grad_estimator(estimator)
        for index in range(3):
            e, c = step(eager, inputs, seed=index), step(compiled, inputs, seed=index)
            check_equal(e, c, f"{kind}, {estimator}, step {index + 1}")
            if estimator == ESTIMATORS[0] and index == 0:
                assert c["new_graphs"] > 0  # the compiled path ran
            elif index > 0:
                assert c["new_graphs"] == 0, f"{kind}, {estimator}: step {index + 1} recompiled"
            for optimizer in optimizers:
                optimizer.step()


def test_compiled_jacobian_term_and_cached_eval_equal_eager():
    eager, compiled = pair("lm", jacobian_reg_weight=0.5)
    inputs = inputs_for("lm", eager.config)
    for index in range(2):
        e, c = step(eager, inputs, seed=index), step(compiled, inputs, seed=index)
        check_equal(e, c, f"jacobian term, step {index + 1}")
        assert index == 0 or c["new_graphs"] == 0
    eager.eval(), compiled.eval()
    with torch.no_grad():
        e, c = eager(input_ids=inputs["input_ids"]), compiled(input_ids=inputs["input_ids"])
    torch.testing.assert_close(c.logits, e.logits, rtol=1e-9, atol=1e-10)
    for (ek, ev), (ck, cv) in zip(
        ((layer.keys, layer.values) for layer in e.past_key_values.layers),
        ((layer.keys, layer.values) for layer in c.past_key_values.layers),
    ):
        torch.testing.assert_close(ck, ek), torch.testing.assert_close(cv, ev)


def test_compile_cell_config_field_is_validated():
    with pytest.raises(DEQConfigError, match=r"compile_cell='yes' is invalid: expected True or False"):
        create_config("test_mdeq_tiny", compile_cell="yes")
    assert create_config("test_deq_transformer_tiny").compile_cell is False
    model = hf_deq.create_model("test_mdeq_tiny", compile_cell=True)
    assert all(layer.compile_cell for layer in model.deq_layers())
    model.set_solver("broyden", compile_cell=False)
    assert not model.config.compile_cell and not any(layer.compile_cell for layer in model.deq_layers())
