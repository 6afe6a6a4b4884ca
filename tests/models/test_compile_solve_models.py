"""``compile_solve=True`` on both model families (tiny presets, float64): training steps give the eager losses,
logits and gradients, and nothing compiles again after an estimator's first step, for a smaller last batch, or
for another eval budget; the config field is validated and is a flag of both training scripts. Every estimator
runs on the Anderson LM; the other cases (each estimator's first step is a compilation of its own, the costliest
part of this file) run two or three, so that every estimator also runs on a second case and both families
run a phantom gradient and an exact or one-step one.

The LM that trains every estimator compiles with the ``aot_eager`` backend: Dynamo's capture, its guards (which
decide recompiles) and AOTAutograd's graphs are those of inductor, without inductor's minutes of C++ compilation
of these cells on a 2-core CI machine (``tests/deq/test_compile_solve.py`` runs inductor on every solver's step).
The other two cases use Dynamo's ``eager`` backend (``CASE_BACKENDS``): the same capture and guards.
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
from hf_deq.deq.compile import CompiledSolve
from hf_deq.tasks import get_task
from hf_deq.training import training_parser

#: the backend of each case: ``aot_eager`` (Dynamo + AOTAutograd's forward and backward graphs) for the LM that
#: trains every estimator; Dynamo's ``eager`` (its capture and guards: what decides a recompile) for the other two,
#: where AOTAutograd's tracing of the cell would double the cost of this, the suite's longest file
CASE_BACKENDS = {"mdeq_broyden": "eager", "lm_anderson": "aot_eager", "lm_post_fixed_point": "eager"}


def backend(case: str) -> str:
    """``HF_DEQ_TEST_COMPILE_BACKEND`` when set (e.g. ``inductor``), else the case's."""
    return os.environ.get("HF_DEQ_TEST_COMPILE_BACKEND", CASE_BACKENDS[case])


#: family, preset, model class and solve settings: each solver once, a sync-free one, dropout + weight norm
CASES = {
    "mdeq_broyden": ("mdeq", "test_mdeq_tiny", hf_deq.MDEQForImageClassification, "broyden", {}),
    "lm_anderson": (
        "lm",
        "test_deq_transformer_tiny",
        hf_deq.DEQTransformerForCausalLM,
        "anderson",
        {"check_every": 4},
    ),
    "lm_post_fixed_point": (
        "lm",
        "test_deq_transformer_tiny_post",
        hf_deq.DEQTransformerForCausalLM,
        "fixed_point",
        {"check_every": None, "damping": 0.8},
    ),
}


#: the estimators each case trains with (the first step of each compiles its graphs)
CASE_ESTIMATORS = {
    "mdeq_broyden": ("upg", "one_step", "unrolled"),
    "lm_anderson": ESTIMATORS,
    "lm_post_fixed_point": ("implicit", "npg"),
}


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def pair(case: str):
    """An eager model in float64 and its copy with a compiled solve."""
    family, preset, cls, solver, solver_kwargs = CASES[case]
    torch.manual_seed(0)
    config = create_config(
        preset,
        solver=solver,
        solver_kwargs=solver_kwargs,
        solver_max_iter=12,
        solver_on_failure="ignore",
        solver_tol=1e-8,
        grad_steps=3,
    )
    eager = cls(config).double().train()
    compiled = copy.deepcopy(eager)
    compiled.set_solver(solver, compile_solve=True, **solver_kwargs)
    assert (compiled.config.solver_kwargs or {}) == (eager.config.solver_kwargs or {})
    assert compiled.config.compile_solve and all(layer.compile_solve for layer in compiled.deq_layers())
    for layer in compiled.deq_layers():
        layer.compiled_solve = CompiledSolve({"backend": backend(case)})
        layer.compiled_cell = CompiledCell({"backend": backend(case), "dynamic": True})
    return family, eager, compiled


def inputs_for(family: str, config, batch: int = 4) -> dict:
    inputs = tiny_inputs(family, config, batch=batch)
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


def step(model, inputs, seed: int) -> dict:
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both models
    before = graphs()
    outputs = model(**inputs)
    outputs.loss.backward()
    return {
        "loss": outputs.loss.detach(),
        "logits": outputs.logits.detach(),
        "nstep": outputs.solver_nstep,
        "grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None},
        "new_graphs": graphs() - before,
    }


def check_equal(eager: dict, compiled: dict, what: str) -> None:
    """Logits to float64 precision; the loss and so every gradient to float32's (the heads compute the loss in
    float32, as in ``test_compile_cell_models.py``)."""
    torch.testing.assert_close(compiled["loss"], eager["loss"], rtol=1e-6, atol=1e-8, msg=f"loss, {what}")
    torch.testing.assert_close(
        compiled["logits"], eager["logits"], rtol=1e-9, atol=1e-10, msg=f"logits, {what}"
    )
    assert torch.equal(compiled["nstep"], eager["nstep"]), what
    assert compiled["grads"].keys() == eager["grads"].keys(), what
    for name, grad in eager["grads"].items():
        torch.testing.assert_close(compiled["grads"][name], grad, rtol=1e-5, atol=1e-8, msg=f"{name}, {what}")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_solve_equals_eager_and_does_not_recompile(case):
    family, eager, compiled = pair(case)
    inputs = inputs_for(family, eager.config)
    smaller = {k: v[:3] for k, v in inputs.items()}  # a smaller last batch
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (eager, compiled)]
    estimators = CASE_ESTIMATORS[case]
    for estimator in estimators:
        for model in (eager, compiled):
            model.set_grad_estimator(estimator)
        for index, batch in enumerate((inputs, inputs, smaller)):
            e, c = step(eager, batch, seed=index), step(compiled, batch, seed=index)
            check_equal(e, c, f"{case}, {estimator}, step {index + 1}")
            if estimator == estimators[0] and index == 0:
                assert c["new_graphs"] > 0  # the compiled path ran
            elif index > 0:
                assert c["new_graphs"] == 0, f"{case}, {estimator}: step {index + 1} compiled again"
            for optimizer in optimizers:
                optimizer.step()
    eager.eval(), compiled.eval()
    for index, budget in enumerate((3, 7)):  # train and eval budgets: the loop count is outside the graph
        for model in (eager, compiled):
            model.config.solver_eval_max_iter = budget
        before = graphs()
        with torch.no_grad():
            e, c = eager(**inputs), compiled(**inputs)
        torch.testing.assert_close(c.logits, e.logits, rtol=1e-9, atol=1e-10)
        assert torch.equal(c.solver_nstep, e.solver_nstep)
        assert index == 0 or graphs() == before, f"{case}: eval budget {budget} compiled again"


def test_every_estimator_runs_on_two_cases():
    for estimator in ESTIMATORS:
        assert sum(estimator in chosen for chosen in CASE_ESTIMATORS.values()) >= 2, estimator
    assert CASE_ESTIMATORS.keys() == CASES.keys()


def test_compile_solve_config_field_is_validated_and_a_training_flag():
    with pytest.raises(DEQConfigError, match=r"compile_solve='yes' is invalid: expected True or False"):
        create_config("test_mdeq_tiny", compile_solve="yes")
    assert create_config("test_deq_transformer_tiny").compile_solve is False
    model = hf_deq.create_model("test_mdeq_tiny", compile_solve=True)
    assert all(layer.compile_solve and layer.compile_cell for layer in model.deq_layers())
    model.set_solver("broyden", compile_solve=False)
    assert not any(layer.compile_solve for layer in model.deq_layers())
    for task_name in ("image-classification", "causal-lm"):
        parser = training_parser(get_task(task_name))
        assert parser.parse_into_dataclasses(["--compile_solve"])[0].compile_solve is True
        assert parser.parse_into_dataclasses([])[0].compile_solve is None  # unset: the preset's value
