"""Honest upper bounds: a budget, a step count or a solver history too large to ever finish (or to fit in
memory), and a non-finite solver hyperparameter, are refused by the config (and by the solver constructors)
with an error naming the field and the bound, instead of hanging or exhausting memory."""

from __future__ import annotations

import time

import pytest

import hf_deq
from hf_deq import DEQConfigError
from hf_deq.configuration_deq import MAX_GRAD_STEPS, MAX_SOLVER_ITER
from hf_deq.deq import get_solver
from hf_deq.deq.solvers.anderson import MAX_HISTORY

HUGE = [
    ({"solver_max_iter": 10**12}, "solver_max_iter", f"[1, {MAX_SOLVER_ITER}]"),
    ({"solver_eval_max_iter": 10**12}, "solver_eval_max_iter", f"[1, {MAX_SOLVER_ITER}]"),
    ({"grad_steps": 10**9}, "grad_steps", f"[1, {MAX_GRAD_STEPS}]"),
    ({"grad_estimator": "implicit", "grad_max_iter": 10**12, "grad_tol": 0.0}, "grad_max_iter", "10000"),
    ({"solver_kwargs": {"memory": 10**9}}, "solver_kwargs", f"[1, {MAX_HISTORY}]"),
    ({"solver_kwargs": {"regularization": float("inf")}}, "solver_kwargs", "finite"),
    ({"solver_kwargs": {"regularization": float("nan")}}, "solver_kwargs", "finite"),
    ({"solver": "broyden", "solver_kwargs": {"memory": 10**9}}, "solver_kwargs", f"[1, {MAX_HISTORY}]"),
]


@pytest.mark.parametrize(("fields", "field", "bound"), HUGE)
def test_huge_and_non_finite_values_are_refused_with_their_bound(fields, field, bound):
    start = time.perf_counter()
    with pytest.raises(DEQConfigError) as info:
        hf_deq.create_config("test_mdeq_tiny", **fields)
    assert info.value.field == field and bound in str(info.value)
    model = hf_deq.create_model("test_mdeq_tiny")
    with pytest.raises(DEQConfigError, match=field):
        model.config.update(fields)
        model.config.check_fields()
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("fields", [{"solver_max_iter": MAX_SOLVER_ITER}, {"grad_steps": MAX_GRAD_STEPS}])
def test_the_bounds_themselves_are_accepted(fields):
    assert hf_deq.create_config("test_mdeq_tiny", **fields)


@pytest.mark.parametrize(
    ("solver", "kwargs", "message"),
    [
        (
            "anderson",
            {"memory": MAX_HISTORY + 1},
            f"Anderson.memory must be an integer in [1, {MAX_HISTORY}]",
        ),
        ("broyden", {"memory": 10**9}, f"Broyden.memory must be an integer in [1, {MAX_HISTORY}]"),
        ("gmres", {"restart": 10**9}, f"GMRES.restart must be an integer in [1, {MAX_HISTORY}]"),
        ("anderson", {"regularization": float("inf")}, "Anderson.regularization must be a finite number"),
    ],
)
def test_solver_constructors_refuse_huge_histories_and_infinite_regularization(solver, kwargs, message):
    with pytest.raises(ValueError) as info:
        get_solver(solver, **kwargs)
    assert message in str(info.value)
    get_solver(solver, **{key: MAX_HISTORY if key != "regularization" else 1e6 for key in kwargs})
