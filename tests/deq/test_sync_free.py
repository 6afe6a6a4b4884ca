"""Solvers that read the stop test on the host only every ``check_every`` evaluations (or never).

The reference is the same solver with ``check_every=1`` (one host read per evaluation); the per-sample
statistics must not depend on how often the host looks. Host reads are counted at the dispatcher
(``aten._local_scalar_dense`` is what ``item()``, ``bool()``, ``int()`` and ``float()`` of a tensor run).
"""

from __future__ import annotations

import math

import pytest
import torch
from deq_helpers import contraction  # tests/deq is on sys.path
from torch.utils._python_dispatch import TorchDispatchMode

from hf_deq.deq import DEQFixedPoint, get_solver

FORWARD_SOLVERS = ["fixed_point", "anderson", "broyden"]
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}
DATA_DEPENDENT_SHAPES = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default}


class _HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host, and those whose output shape depends on data."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.data_dependent = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func in HOST_READS
        self.data_dependent += func in DATA_DEPENDENT_SHAPES
        return func(*args, **(kwargs or {}))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(4321)


def _staggered_map(gen: torch.Generator, dim: int = 8):
    """``f(z)_b = a_b * tanh(W z_b) + x_b`` with Lipschitz constants 0, 0.3, 0.7, 0.95: the samples reach a
    given tolerance at very different evaluations."""
    w = contraction(dim, 1.0, gen)
    a = torch.tensor([0.0, 0.3, 0.7, 0.95], dtype=torch.float64)
    x = torch.randn(4, dim, generator=gen, dtype=torch.float64)
    return (lambda z: a.unsqueeze(1) * torch.tanh(z @ w.T) + x), torch.zeros(4, dim, dtype=torch.float64)


def _assert_same_per_sample(result, reference) -> None:
    torch.testing.assert_close(result.z, reference.z, rtol=1e-12, atol=1e-14)
    assert torch.equal(result.nstep, reference.nstep), (result.nstep, reference.nstep)
    torch.testing.assert_close(result.abs_residual, reference.abs_residual, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(result.rel_residual, reference.rel_residual, rtol=1e-10, atol=1e-14)
    assert torch.equal(result.converged, reference.converged)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
@pytest.mark.parametrize("stop_mode", ["rel", "abs"])
@pytest.mark.parametrize("check_every", [3, 4, None, 0])
def test_statistics_do_not_depend_on_check_every(name, stop_mode, check_every, gen):
    fn, z0 = _staggered_map(gen)
    max_iter = 60
    for tol in (1e-9, 1e-30):  # every sample converges at its own step / the budget runs out
        reference = get_solver(name).solve(
            fn, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, return_trace=True
        )
        result = get_solver(name, check_every=check_every).solve(
            fn, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, return_trace=True
        )
        _assert_same_per_sample(result, reference)
        if tol == 1e-9:
            assert bool(reference.converged.all()) and reference.nfev < max_iter
            # the samples did reach tol at different evaluations
            first_below = (reference.trace <= tol).to(torch.int8).argmax(dim=0)
            assert len(set(first_below.tolist())) >= 3, first_below
        # nfev counts the evaluations that really ran: up to the next host read, or the whole budget.
        if check_every:
            expected = min(max_iter, math.ceil(reference.nfev / check_every) * check_every)
        else:
            expected = max_iter
        assert result.nfev == expected
        torch.testing.assert_close(result.trace[: reference.nfev], reference.trace, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_frozen_statistics_ignore_later_better_iterates(name, gen):
    """After the batch has converged, the evaluations until the next host read would improve every sample
    (the map keeps contracting): the result must still be the one at the evaluation of convergence."""
    fn, z0 = _staggered_map(gen)
    reference = get_solver(name).solve(fn, z0, max_iter=200, tol=1e-6, stop_mode="abs")
    result = get_solver(name, check_every=None).solve(fn, z0, max_iter=200, tol=1e-6, stop_mode="abs")
    unfrozen = get_solver(name).solve(fn, z0, max_iter=200, tol=0.0, stop_mode="abs")
    assert result.nfev == 200
    assert bool((unfrozen.abs_residual[1:] < reference.abs_residual[1:]).all())  # there was more to gain
    _assert_same_per_sample(result, reference)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
@pytest.mark.parametrize("check_every", [5, None])
def test_nan_sample_keeps_best_finite_iterate_without_host_reads(name, check_every, gen):
    batch, dim = 3, 5
    a = contraction(dim, 0.5, gen)
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)

    def make_fn():
        calls = {"n": 0}

        def fn(z):
            calls["n"] += 1
            out = z @ a.T + b
            if calls["n"] > 3:
                out = out.clone()
                out[1] = float("nan")
            if calls["n"] == 6:
                out[2, 0] = float("inf")  # a transient failure of another sample
            return out

        return fn

    z0 = torch.zeros(batch, dim, dtype=torch.float64)
    reference = get_solver(name).solve(make_fn(), z0, max_iter=80, tol=1e-12, stop_mode="abs")
    result = get_solver(name, check_every=check_every).solve(
        make_fn(), z0, max_iter=80, tol=1e-12, stop_mode="abs"
    )
    _assert_same_per_sample(result, reference)
    assert bool(torch.isfinite(result.z).all())
    assert result.converged.tolist() == [True, False, True]


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
@pytest.mark.parametrize("check_every", [1, 3, 7, None])
def test_host_reads_bounded_by_checks(name, check_every, gen):
    """A map without a fixed point runs the whole budget: the host reads at most once per check."""
    batch, dim, max_iter = 3, 6, 40
    w = contraction(dim, 1.0, gen)

    def fn(z):
        return z + 1.0 + 0.5 * torch.tanh(z @ w.T)  # f(z) - z >= 0.5 elementwise: no fixed point

    solver = get_solver(name, check_every=check_every)
    z0 = torch.zeros(batch, dim, dtype=torch.float64)
    counter = _HostReads()
    with counter:
        result = solver.solve(fn, z0, max_iter=max_iter, tol=1e-6, stop_mode="abs")
    assert result.nfev == max_iter
    assert counter.data_dependent == 0
    if check_every == 1:
        assert counter.reads >= max_iter - 1  # the counter sees the per-evaluation reads of today's loop
    else:
        assert counter.reads <= (math.ceil(max_iter / check_every) if check_every else 0) + 1, counter.reads


def test_check_every_reaches_the_solver_from_solver_kwargs(gen):
    """``solver_kwargs={"check_every": k}`` (a config's ``solver_kwargs``) makes the DEQ layer's forward read
    the host about ``max_iter / k`` times."""
    dim, max_iter = 6, 30
    w = contraction(dim, 0.9, gen)
    x = torch.randn(2, dim, generator=gen, dtype=torch.float64)

    def fn(z):
        return torch.tanh(z @ w.T + x)

    z0 = torch.zeros(2, dim, dtype=torch.float64)
    deq = DEQFixedPoint("anderson", max_iter=max_iter, tol=1e-30, solver_kwargs={"check_every": 5})
    deq.eval()
    assert deq.solver.check_every == 5
    reference = DEQFixedPoint("anderson", max_iter=max_iter, tol=1e-30, on_failure="ignore").eval()
    counter = _HostReads()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="did not reach"), counter:
        z, result = deq(fn, z0)
    assert counter.reads <= max_iter // 5 + 4  # + the failure report after the solve
    with torch.no_grad():
        z_ref, _ = reference(fn, z0)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_sync_free_under_bf16_autocast(name, gen):
    batch, dim = 4, 16
    w = contraction(dim, 0.8, gen, dtype=torch.float32)
    x = torch.randn(batch, dim, generator=gen)

    def fn(z):
        return torch.tanh(torch.addmm(x, z, w.T))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = get_solver(name).solve(fn, torch.zeros(batch, dim), max_iter=40, tol=2e-2)
        result = get_solver(name, check_every=4).solve(fn, torch.zeros(batch, dim), max_iter=40, tol=2e-2)
    assert result.z.dtype == torch.float32
    assert bool(result.converged.all())
    torch.testing.assert_close(result.z, reference.z, rtol=1e-6, atol=1e-6)
    assert torch.equal(result.nstep, reference.nstep)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_bad_check_every_is_refused(name, bad):
    with pytest.raises(ValueError, match="check_every"):
        get_solver(name, check_every=bad)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_check_every_is_a_hyperparameter(name):
    solver = get_solver(name, check_every=None)
    assert solver.check_every is None
    assert "check_every=None" in repr(solver)
    assert get_solver(name).check_every == 1
