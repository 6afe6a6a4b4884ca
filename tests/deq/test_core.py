"""``DEQFixedPoint`` behaviour, graph lifetime and the solver / estimator registries."""

from __future__ import annotations

import gc
import sys
import warnings
import weakref

import pytest
import torch
from deq_helpers import ESTIMATORS, Cell, contraction  # tests/deq is on sys.path
from torch import nn

from hf_deq.deq import (
    Anderson,
    DEQConvergenceError,
    DEQFixedPoint,
    FixedPointIteration,
    GradientEstimator,
    NeumannPhantomGradient,
    OneStepGradient,
    Solver,
    UnrolledPhantomGradient,
    available_grad_estimators,
    available_solvers,
    failed_samples,
    get_grad_estimator,
    get_solver,
    grad_estimator_from_hyperparameters,
    register_grad_estimator,
    register_solver,
)
from hf_deq.deq.grad import GRAD_ESTIMATORS
from hf_deq.deq.solvers import SOLVERS
from hf_deq.deq.solvers.base import evaluate

DT = torch.float64


def _contraction(dim: int, norm: float, seed: int = 0) -> torch.Tensor:
    return contraction(dim, norm, torch.Generator().manual_seed(seed), dtype=DT)


# ----------------------------------------------------------------------------------------------- graph lifetime


def _live_tensor_count() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


@pytest.fixture
def frozen_gc():
    """Move the objects that exist before the test out of the collector's way (``gc.freeze``), so that
    ``gc.collect`` and ``gc.get_objects`` only see what the test creates and stay fast."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_no_graph_retained_across_training_steps(name, frozen_gc):
    """Tensors recorded by the autograd graph of a step (the states ``f`` was called on under autograd) are
    alive while the step's output is, and collected once the step is over; the number of live tensors
    does not grow from step to step."""
    torch.manual_seed(0)
    dim = 6
    cell = Cell(dim)
    encoder = nn.Linear(4, dim)
    deq = DEQFixedPoint("anderson", get_grad_estimator(name, **ESTIMATORS[name]), max_iter=30, tol=1e-5)
    opt = torch.optim.SGD([*cell.parameters(), *encoder.parameters()], lr=1e-2)
    x = torch.randn(3, 4)
    counts = {}
    for step in range(4):
        graph_inputs: list[weakref.ref] = []

        def fn(z, injection, graph_inputs=graph_inputs):
            out = cell(z, injection)
            if out.requires_grad:
                graph_inputs.append(weakref.ref(z))
            return out

        injection = encoder(x)
        z, result = deq(lambda z, inj=injection: fn(z, inj), torch.zeros(3, dim))
        loss = z.pow(2).mean()
        z_ref = weakref.ref(z)
        assert graph_inputs, "the estimator never called f under autograd"
        assert any(r() is not None for r in graph_inputs)  # the graph holds them
        opt.zero_grad()
        loss.backward()
        opt.step()
        del z, result, loss, injection
        # Freed by reference counting alone (no cycles through the graph), and of course after a collection.
        assert z_ref() is None
        assert all(r() is None for r in graph_inputs), "a tensor of the autograd graph outlived the step"
        if step in (1, 3):
            counts[step] = _live_tensor_count()
    assert counts[3] <= counts[1] + 2, counts


def test_graph_retention_check_detects_a_leak(frozen_gc):
    """Control for the test above: keeping a graph alive (no backward) keeps the recorded states alive."""
    torch.manual_seed(0)
    cell = Cell(4)
    refs: list[weakref.ref] = []
    injection = torch.randn(2, 4, requires_grad=True)

    def fn(z):
        out = cell(z, injection)
        if out.requires_grad:
            refs.append(weakref.ref(z))
        return out

    leaked = []
    for name in ("implicit", "upg"):
        deq = DEQFixedPoint("anderson", name, max_iter=30, tol=1e-5)
        z, _ = deq(fn, torch.zeros(2, 4))
        leaked.append(z.sum())
        del z
    gc.collect()
    assert refs and all(r() is not None for r in refs)
    del leaked
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_no_grad_call_returns_plain_tensor(name):
    torch.manual_seed(0)
    cell = Cell(4)
    injection = torch.randn(2, 4, requires_grad=True)
    calls = {"grad": 0}

    def fn(z):
        out = cell(z, injection)
        calls["grad"] += int(out.requires_grad)
        return out

    deq = DEQFixedPoint(
        "anderson", get_grad_estimator(name, **ESTIMATORS[name]), tol=1e-6, jacobian_reg_weight=1.0
    )
    deq.train()
    with torch.no_grad():
        z, result = deq(fn, torch.zeros(2, 4))
    assert not z.requires_grad and z.grad_fn is None
    assert result.jacobian_loss is None
    assert calls["grad"] == 0
    assert bool(result.converged.all())


# ----------------------------------------------------------------------------------------------- DEQFixedPoint


def _slow_map(dim: int = 4, batch: int = 2):
    w = _contraction(dim, 0.99, seed=3)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(4), dtype=DT)
    return lambda z: torch.tanh(z @ w.T) + x


def test_eval_mode_uses_eval_max_iter():
    fn = _slow_map()
    z0 = torch.zeros(2, 4, dtype=DT)
    deq = DEQFixedPoint("fixed_point", "implicit", max_iter=9, tol=0.0, eval_max_iter=4, on_failure="ignore")
    with torch.no_grad():
        deq.train()
        assert deq(fn, z0)[1].nfev == 9
        deq.eval()
        assert deq(fn, z0)[1].nfev == 4
    deq_default = DEQFixedPoint("fixed_point", max_iter=9, tol=0.0, on_failure="ignore").eval()
    with torch.no_grad():
        assert deq_default(fn, z0)[1].nfev == 9


def test_non_convergence_warns_once():
    fn = _slow_map()
    z0 = torch.zeros(2, 4, dtype=DT)
    deq = DEQFixedPoint("fixed_point", max_iter=3, tol=1e-10)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="did not reach"):
            _, result = deq(fn, z0)
        assert not bool(result.converged.any())
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            deq(fn, z0)
        assert not [w for w in record if issubclass(w.category, RuntimeWarning)]


def test_converged_solve_does_not_warn():
    fn = _slow_map()
    deq = DEQFixedPoint("anderson", max_iter=100, tol=1e-6)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with torch.no_grad():
            deq(fn, torch.zeros(2, 4, dtype=DT))
    assert not [w for w in record if issubclass(w.category, RuntimeWarning)]


def test_on_failure_raise_and_ignore():
    fn = _slow_map()
    z0 = torch.zeros(2, 4, dtype=DT)
    with torch.no_grad():
        with pytest.raises(DEQConvergenceError, match="did not reach"):
            DEQFixedPoint("fixed_point", max_iter=3, tol=1e-10, on_failure="raise")(fn, z0)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            _, result = DEQFixedPoint("fixed_point", max_iter=3, tol=1e-10, on_failure="ignore")(fn, z0)
    assert not record
    assert not bool(result.converged.any())
    assert issubclass(DEQConvergenceError, RuntimeError)


# ----------------------------------------------------------------------------- which missed solves count as failed
def _affine(scale, batch: int = 3, dim: int = 6):
    """``f(z) = scale * z + x``, per sample when ``scale`` is a ``(B,)`` tensor: fixed-point iteration converges
    geometrically for ``|scale| < 1``, oscillates with a growing amplitude for ``scale = -2``, grows for 3."""
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(7), dtype=DT)
    scale = torch.as_tensor(scale, dtype=DT).reshape(-1, 1)
    return lambda z: scale * z + x


def _deq_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "DEQ solver" in str(w.message)]


def _solve(fn, on_failure="warn", **kwargs):
    deq = DEQFixedPoint(kwargs.pop("solver", "fixed_point"), on_failure=on_failure, **kwargs)
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        for _ in range(3):
            _, result = deq(fn, torch.zeros(3, 6, dtype=DT))
    return result, _deq_warnings(record)


def test_a_budget_limited_solve_that_still_converges_is_reported_not_warned_nor_raised():
    """0.8-contraction, 8 evaluations: relative residual ~0.05 = 500x tol, still falling at the last step."""
    for on_failure in ("warn", "raise"):
        result, found = _solve(_affine(0.8), on_failure, max_iter=8, tol=1e-4)
        assert not found
        assert not bool(result.converged.any()) and bool((result.residual > 100 * 1e-4).all())
        assert bool((result.nstep == result.nfev).all())  # its best iterate is its last
        assert not bool(failed_samples(result).any())
    result, found = _solve(_affine(0.8), max_iter=8, tol=1e-5)  # the same solve, 5000x its tolerance: failed
    assert bool(failed_samples(result).all()) and len(found) == 1


@pytest.mark.parametrize("scale", [-2.0, 3.0])
def test_a_diverging_solve_fails_warns_once_and_raises_when_asked(scale):
    result, found = _solve(_affine(scale), max_iter=12, tol=1e-3)
    assert bool(failed_samples(result).all())
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert "did not reach rel residual 0.001 for 3/3 samples: the solve failed" in message
    assert "(>= 1)" in message and "jacobian_reg_weight" in message and "warned once" in message
    with pytest.raises(DEQConvergenceError, match="the solve failed"):
        _solve(_affine(scale), "raise", max_iter=12, tol=1e-3)


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point"])
def test_an_overflowing_solve_fails(solver):
    result, found = _solve(lambda z: 1e20 * z + 1.0, solver=solver, max_iter=12, tol=1e-6)
    assert bool(failed_samples(result).all()) and len(found) == 1


def test_a_stalled_residual_far_above_tol_fails_one_near_tol_does_not():
    """``f(z) = z + c`` has no fixed point: the absolute residual stays ``||c|| = 0.12`` from the first step on."""
    c = torch.full((3, 6), 0.05, dtype=DT)
    result, found = _solve(lambda z: z + c, solver="anderson", max_iter=10, tol=1e-3, stop_mode="abs")
    assert bool((result.nstep == 1).all()) and bool(failed_samples(result).all()) and len(found) == 1
    result, found = _solve(lambda z: z + c, solver="anderson", max_iter=10, tol=1e-2, stop_mode="abs")
    assert not bool(result.converged.any()) and not bool(failed_samples(result).any()) and not found


def test_failure_is_judged_per_sample():
    result, found = _solve(_affine(torch.tensor([0.8, -2.0, 0.8])), max_iter=8, tol=1e-4)
    assert failed_samples(result).tolist() == [False, True, False]
    assert len(found) == 1 and "for 1/3 samples" in str(found[0].message)


def test_jacobian_regularization_matches_frobenius_norm():
    torch.manual_seed(0)
    batch, dim = 400, 8
    w = _contraction(dim, 0.5, seed=5).requires_grad_()
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(6), dtype=DT)

    def fn(z):
        return z @ w.T + x

    deq = DEQFixedPoint("anderson", "implicit", max_iter=50, tol=1e-8, jacobian_reg_weight=0.5)
    deq.train()
    _, result = deq(fn, torch.zeros(batch, dim, dtype=DT))
    loss = result.jacobian_loss
    assert loss is not None and loss.dim() == 0 and bool(torch.isfinite(loss))
    expected = float(w.detach().pow(2).sum()) / dim
    assert float(loss.detach()) == pytest.approx(expected, rel=0.15)
    assert loss.requires_grad
    loss.backward()
    assert w.grad is not None and bool(torch.isfinite(w.grad).all())
    # E[grad] = 2 W / D: the stochastic gradient points the same way.
    cosine = torch.nn.functional.cosine_similarity(w.grad.flatten(), w.detach().flatten(), dim=0)
    assert float(cosine) > 0.9


def test_jacobian_regularization_off_by_default_and_in_eval():
    fn = _slow_map()
    w = torch.zeros(4, 4, dtype=DT, requires_grad=True)
    g = lambda z: fn(z) + z @ w.T  # noqa: E731  (depends on a parameter so grad is needed)
    z0 = torch.zeros(2, 4, dtype=DT)
    _, result = DEQFixedPoint("anderson", max_iter=100, tol=1e-6)(g, z0)
    assert result.jacobian_loss is None
    _, result = DEQFixedPoint("anderson", max_iter=100, tol=1e-6, jacobian_reg_weight=1.0).eval()(g, z0)
    assert result.jacobian_loss is None


def test_result_statistics_are_per_sample():
    fn = _slow_map(batch=3)
    deq = DEQFixedPoint("anderson", max_iter=100, tol=1e-6)
    z, result = deq(fn, torch.zeros(3, 4, dtype=DT))
    assert result.nstep.shape == result.abs_residual.shape == result.rel_residual.shape == (3,)
    assert result.residual is result.rel_residual
    true_rel = (fn(z) - z).norm(dim=1) / fn(z).norm(dim=1)
    torch.testing.assert_close(result.rel_residual.double(), true_rel, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"on_failure": "x"}, "on_failure", "'x'"),
        ({"max_iter": 0}, "max_iter", "0"),
        ({"eval_max_iter": -2}, "max_iter", "-2"),
        ({"tol": -1}, "tol", "-1"),
        ({"stop_mode": "foo"}, "stop_mode", "'foo'"),
        ({"jacobian_reg_weight": -0.5}, "jacobian_reg_weight", "-0.5"),
    ],
)
def test_deq_fixed_point_validation(kwargs, field, value):
    with pytest.raises(ValueError) as info:
        DEQFixedPoint(**kwargs)
    message = str(info.value)
    assert field in message and value in message, message


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"max_iter": 0, "tol": 1e-3}, "max_iter", "0"),
        ({"max_iter": 5, "tol": -1}, "tol", "-1"),
        ({"max_iter": 5, "tol": 1e-3, "stop_mode": "foo"}, "stop_mode", "'foo'"),
    ],
)
def test_solve_argument_validation(kwargs, field, value):
    with pytest.raises(ValueError) as info:
        FixedPointIteration().solve(lambda z: z, torch.zeros(1, 2), **kwargs)
    message = str(info.value)
    assert field in message and value in message, message


# ----------------------------------------------------------------------------------------------- registries


def test_builtin_names_available():
    assert {"fixed_point", "anderson", "broyden"} <= set(available_solvers())
    assert {"implicit", "upg", "npg", "one_step", "unrolled"} <= set(available_grad_estimators())


def test_name_normalisation():
    assert isinstance(get_grad_estimator("One-Step"), OneStepGradient)
    assert isinstance(get_grad_estimator(" one step "), OneStepGradient)
    assert isinstance(get_grad_estimator("UPG"), UnrolledPhantomGradient)
    assert isinstance(get_solver("Fixed-Point"), FixedPointIteration)
    assert isinstance(get_solver("ANDERSON", memory=3), Anderson)
    assert type(DEQFixedPoint(solver="Fixed Point", grad_estimator="NPG").solver) is FixedPointIteration


def test_get_returns_instances_unchanged_and_builds_with_hyperparameters():
    solver = Anderson(memory=2)
    assert get_solver(solver) is solver
    estimator = NeumannPhantomGradient(steps=4)
    assert get_grad_estimator(estimator) is estimator
    assert DEQFixedPoint(solver=solver, grad_estimator=estimator).solver is solver
    built = get_solver("anderson", memory=7, mixing=0.5)
    assert (built.memory, built.mixing) == (7, 0.5)
    upg = get_grad_estimator("upg", steps=6, damping=0.3)
    assert (upg.steps, upg.damping) == (6, 0.3)
    deq = DEQFixedPoint(solver="broyden", solver_kwargs={"memory": 4})
    assert deq.solver.memory == 4
    with pytest.raises(TypeError):
        get_solver(solver, memory=3)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        get_solver("newton_krylov")
    for name in ("fixed_point", "anderson", "broyden"):
        assert name in str(info.value)
    assert "newton_krylov" in str(info.value)
    with pytest.raises(ValueError) as info:
        get_grad_estimator("magic")
    for name in ("implicit", "upg", "npg", "one_step", "unrolled"):
        assert name in str(info.value)
    with pytest.raises(ValueError):
        DEQFixedPoint(solver="nope")
    with pytest.raises(ValueError):
        DEQFixedPoint(grad_estimator="nope")


def test_unknown_hyperparameter_raises_type_error():
    with pytest.raises(TypeError, match="bogus"):
        get_solver("anderson", bogus=1)
    with pytest.raises(TypeError, match="steps"):
        get_solver("broyden", steps=3)
    with pytest.raises(TypeError, match="memory"):
        get_grad_estimator("npg", memory=3)
    with pytest.raises(TypeError):
        DEQFixedPoint(solver="fixed_point", solver_kwargs={"memory": 3})


@pytest.mark.parametrize(
    ("name", "kwargs", "field", "value"),
    [
        ("anderson", {"memory": 0}, "memory", "0"),
        ("anderson", {"memory": -7}, "memory", "-7"),
        ("anderson", {"mixing": 2}, "mixing", "2"),
        ("anderson", {"mixing": 0.0}, "mixing", "0.0"),
        ("anderson", {"regularization": -0.125}, "regularization", "-0.125"),
        ("broyden", {"memory": 0}, "memory", "0"),
        ("broyden", {"step_size": 3.5}, "step_size", "3.5"),
        ("fixed_point", {"damping": 1.25}, "damping", "1.25"),
        ("gmres", {"restart": 0}, "restart", "0"),
    ],
)
def test_solver_hyperparameter_validation(name, kwargs, field, value):
    with pytest.raises(ValueError) as info:
        get_solver(name, **kwargs)
    message = str(info.value)
    assert field in message and f"got {value}" in message, message


def test_grad_estimator_from_hyperparameters_passes_only_accepted_ones():
    fields = {"steps": 4, "damping": 0.7, "solver": "anderson", "max_iter": 11, "tol": 1e-5}
    upg = grad_estimator_from_hyperparameters("upg", **fields)
    assert (type(upg), upg.steps, upg.damping) == (UnrolledPhantomGradient, 4, 0.7)
    implicit = grad_estimator_from_hyperparameters("implicit", **fields)
    assert (type(implicit.solver), implicit.max_iter, implicit.tol) == (Anderson, 11, 1e-5)
    unrolled = grad_estimator_from_hyperparameters("unrolled", **fields)
    assert unrolled.steps == 4
    assert isinstance(grad_estimator_from_hyperparameters("one_step", **fields), OneStepGradient)


class _HalfStepSolver(Solver):
    """A user solver: damped iteration with step 1/2, counting its calls."""

    def __init__(self, marker: int = 0) -> None:
        self.marker = marker
        self.calls = 0

    def _solve(self, fn, z0, max_iter, tracker):
        self.calls += 1
        z = z0
        for _ in range(max_iter):
            fz, done = evaluate(fn, z, tracker)
            if bool(done.all()):
                return
            z = 0.5 * (z + fz)


class _ScaledOneStep(GradientEstimator):
    """A user estimator: value f(z*) (like one-step), gradient scaled by ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0

    def attach(self, fn, z_star):
        self.calls += 1
        out = fn(z_star.detach())
        return out.detach() + self.scale * (out - out.detach())


@pytest.fixture
def registered():
    register_solver("Test-Half-Step", _HalfStepSolver)
    register_grad_estimator("test scaled one step", _ScaledOneStep)
    yield
    del SOLVERS._classes["test_half_step"]
    del GRAD_ESTIMATORS._classes["test_scaled_one_step"]


def test_registered_classes_usable_by_name(registered):
    assert "test_half_step" in available_solvers()
    assert "test_scaled_one_step" in available_grad_estimators()
    w = _contraction(4, 0.5, seed=7).requires_grad_()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(8), dtype=DT)

    def fn(z):
        return z @ w.T + x

    deq = DEQFixedPoint(
        solver="test-half-step",
        grad_estimator="Test_Scaled_One_Step",
        solver_kwargs={"marker": 3},
        max_iter=200,
        tol=1e-12,
    )
    assert isinstance(deq.solver, _HalfStepSolver) and deq.solver.marker == 3
    assert isinstance(deq.grad_estimator, _ScaledOneStep) and deq.grad_estimator.scale == 1.0
    estimator = get_grad_estimator("test_scaled_one_step", scale=3.0)
    deq.grad_estimator = estimator
    z, result = deq(fn, torch.zeros(2, 4, dtype=DT))
    assert deq.solver.calls == 1 and estimator.calls == 1
    exact = torch.linalg.solve(torch.eye(4, dtype=DT) - w.detach(), x.T).T
    torch.testing.assert_close(z.detach(), exact, rtol=0, atol=1e-10)
    c = torch.randn(2, 4, generator=torch.Generator().manual_seed(9), dtype=DT)
    (c * z).sum().backward()
    torch.testing.assert_close(w.grad, 3.0 * c.T @ exact, rtol=0, atol=1e-9)  # 3 x the one-step gradient
    with pytest.raises(ValueError, match="already registered"):
        register_solver("test_half_step", FixedPointIteration)
    with pytest.raises(TypeError):
        register_solver("not_a_solver", int)
    with pytest.raises(TypeError):
        register_grad_estimator("not_an_estimator", FixedPointIteration)


def test_registry_fixture_cleaned_up():
    assert "test_half_step" not in available_solvers()
    assert "test_scaled_one_step" not in available_grad_estimators()


def test_the_failure_warning_points_at_the_code_that_called_the_layer():
    """Not at ``torch/nn/modules/module.py`` (the ``nn.Module.__call__`` between the caller and the layer): at
    the user's code, here the line of this file's module that ran the layer."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deq = DEQFixedPoint("fixed_point", max_iter=6, tol=1e-3)

        def forward(self, z0):
            self.line = sys._getframe().f_lineno + 1
            return self.deq(_affine(3.0), z0)[0]

    model = Model()
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        model(torch.zeros(3, 6, dtype=DT))
    (found,) = _deq_warnings(record)
    assert (found.filename, found.lineno) == (__file__, model.line)
