"""``compile_solve``: every solver's iteration as one compiled step (inductor) gives the eager solvers' results
in float64 (per-sample best iterate, ``nstep``, residuals, freezing once converged, non-finite samples), with
no graph break, no recompile across budgets, batch sizes and training steps, no host read between the stop
checks, and the same state buffers at every iteration; ``DEQFixedPoint(compile_solve=True)`` gives the eager
outputs and gradients for every estimator.

Compiling is slow on a 2-core machine: every test shares one ``CompiledSolve`` per solver and one map ``f``
(one code object, the same tensor flags), so the whole file compiles one step graph per solver, one more for
``stop_mode="abs"`` and one cell for the estimators. ``HF_DEQ_TEST_COMPILE_BACKEND=aot_eager`` runs it
without inductor's C++ compilation.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from deq_helpers import ESTIMATORS, contraction
from torch._dynamo.utils import counters

from hf_deq.deq import CompiledCell, DEQFixedPoint, Solver, get_grad_estimator, get_solver
from hf_deq.deq.compile import CompiledSolve
from hf_deq.deq.solvers.base import evaluate

BACKEND = os.environ.get("HF_DEQ_TEST_COMPILE_BACKEND", "inductor")
#: one hyperparameter setting per solver (non-default mixing/damping/step exercise every branch of a step)
SOLVERS = {
    "fixed_point": {"damping": 0.9},
    "anderson": {"memory": 3, "mixing": 0.9},
    "broyden": {"memory": 3, "step_size": 0.9},
}


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def compiled() -> dict[str, CompiledSolve]:
    """One compiled step per solver, shared by every test of this file."""
    return {name: CompiledSolve({"backend": BACKEND}) for name in SOLVERS}


def staggered_map(seed: int = 0, batch: int = 4, dim: int = 8, diverging: tuple[int, ...] = ()):
    """``f(z)_b = a_b tanh(W z_b) + x_b`` with Lipschitz constants from 0 to 0.95 (the samples converge at very
    different evaluations); the samples in ``diverging`` map to 3 instead, or to NaN once ``z_0 > 2.5``. Leaf tensors that require grad, as a model's parameters."""
    gen = torch.Generator().manual_seed(seed)
    w = contraction(dim, 1.0, gen).requires_grad_()
    a = torch.linspace(0.0, 0.95, batch, dtype=torch.float64)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64).requires_grad_()
    bad = torch.zeros(batch, dtype=torch.bool)
    bad[list(diverging)] = True

    def fn(z):
        diverged = torch.where(z[:, :1] > 2.5, float("nan"), 3.0)
        return torch.where(bad[:, None], diverged, a[:, None] * torch.tanh(z @ w.T) + x)

    return fn, torch.zeros(batch, dim, dtype=torch.float64), (w, x)


def assert_same_per_sample(result, reference, noise: float = 1e-13) -> None:
    """The same per-sample results. Inductor fuses and rounds differently: a sample that reached rounding
    noise (residual below ``noise``, e.g. a fast one still iterating while a slow one converges) has a
    best iterate that is only defined to that precision, so only its ``nstep`` may differ, and against a
    tolerance below the noise (``tol=1e-30``) whether it converged: an exact zero residual in one rounding is
    1e-17 in another. Each result's verdict still follows its own residuals."""
    torch.testing.assert_close(result.z, reference.z, rtol=1e-12, atol=1e-12)
    above_noise = reference.residual > noise
    assert torch.equal(result.nstep[above_noise], reference.nstep[above_noise]), (
        result.nstep,
        reference.nstep,
    )
    torch.testing.assert_close(result.abs_residual, reference.abs_residual, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(result.rel_residual, reference.rel_residual, rtol=1e-10, atol=1e-14)
    assert torch.equal(result.converged[above_noise], reference.converged[above_noise])
    for r in (result, reference):
        assert torch.equal(r.converged, r.residual <= r.tol), (r.converged, r.residual, r.tol)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_compiled_step_equals_eager_solver(name, compiled):
    """Every ``check_every``, a batch that converges sample by sample and one that runs out of budget, two
    budgets and two batch sizes: the eager solver's results, one graph in all."""
    solve = compiled[name]
    before = graphs()
    for batch, max_iter, tol in ((4, 60, 1e-9), (3, 12, 1e-30)):
        fn, z0, _ = staggered_map(batch=batch)
        reference = get_solver(name, **SOLVERS[name]).solve(fn, z0, max_iter=max_iter, tol=tol)
        for check_every in (1, 4, None):
            solver = get_solver(name, check_every=check_every, **SOLVERS[name])
            result = solve.solve(solver, fn, z0, max_iter=max_iter, tol=tol)
            assert_same_per_sample(result, reference)
            if check_every:
                expected = min(max_iter, math.ceil(reference.nfev / check_every) * check_every)
            else:
                expected = max_iter
            assert result.nfev == expected, (check_every, result.nfev, reference.nfev)
        if tol == 1e-9:  # the samples converged, each at its own evaluation
            assert bool(reference.converged.all()) and len(set(reference.nstep.tolist())) >= 2
    assert graphs() - before <= 1  # one graph for every iteration, budget, batch size and check_every


@pytest.mark.parametrize("name", list(SOLVERS))
def test_non_finite_samples_keep_their_best_finite_iterate(name, compiled):
    fn, z0, _ = staggered_map(seed=1, diverging=(1,))
    reference = get_solver(name, **SOLVERS[name]).solve(fn, z0, max_iter=60, tol=1e-9)
    solver = get_solver(name, check_every=None, **SOLVERS[name])
    result = compiled[name].solve(solver, fn, z0, max_iter=60, tol=1e-9)
    assert_same_per_sample(result, reference)
    assert bool(torch.isfinite(result.z).all())
    assert result.converged.tolist() == [True, False, True, True]


def test_abs_stop_rule_equals_eager(compiled):
    fn, z0, _ = staggered_map(seed=2)
    for tol in (1e-9, 1e-13):
        reference = get_solver("fixed_point", **SOLVERS["fixed_point"]).solve(
            fn, z0, max_iter=60, tol=tol, stop_mode="abs"
        )
        solver = get_solver("fixed_point", check_every=None, **SOLVERS["fixed_point"])
        result = compiled["fixed_point"].solve(solver, fn, z0, max_iter=60, tol=tol, stop_mode="abs")
        assert_same_per_sample(result, reference)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_step_has_no_graph_break(name):
    fn, z0, _ = staggered_map()
    solver = get_solver(name, **SOLVERS[name])
    with torch.no_grad():
        explanation = torch._dynamo.explain(solver.step)(fn, solver.init_state(z0), 1e-6, "rel")
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def count_host_reads(monkeypatch) -> dict[str, int]:
    """Count the host reads of tensor values made in Python (``bool``, ``item``, ``int``, ``float``, ``tolist``,
    ``cpu``, ``numpy``). The compiled step itself cannot read the host: it is one graph (``fullgraph``), and a
    read would break it (``test_step_has_no_graph_break``)."""
    reads = {"n": 0}
    for method in ("__bool__", "item", "__int__", "__float__", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return reads


@pytest.mark.parametrize("name", list(SOLVERS))
def test_no_host_read_between_checks_and_buffers_reused(name, compiled, monkeypatch):
    """With ``check_every`` k the host reads the stop flag once per k iterations (none with ``None``), and every
    iteration of every solve of one shape updates the same state buffers in place (CUDA-graph ready)."""
    solve = compiled[name]
    fn, z0, _ = staggered_map()
    addresses = []
    step = solve.step_function(z0.device)
    solve.solve(get_solver(name, **SOLVERS[name]), fn, z0, max_iter=2, tol=1e-30)  # compiled (if not yet)
    before = graphs()

    def spy(solver, fn, state, tol, stop_mode):
        addresses.append({key: tensor.data_ptr() for key, tensor in state.items()})
        step(solver, fn, state, tol, stop_mode)
        addresses.append({key: tensor.data_ptr() for key, tensor in state.items()})

    monkeypatch.setattr(solve, "step_function", lambda device: spy)
    for check_every, expected in ((None, 0), (4, 2)):
        solver = get_solver(name, check_every=check_every, **SOLVERS[name])
        with monkeypatch.context() as patch:
            reads = count_host_reads(patch)
            result = solve.solve(solver, fn, z0, max_iter=12, tol=1e-30)
        assert result.nfev == 12
        assert reads["n"] == expected, (check_every, reads["n"])
    assert graphs() == before
    assert len(addresses) == 2 * 24
    assert all(a == addresses[0] for a in addresses)


def training_steps(deq: DEQFixedPoint, steps: int = 2) -> list[dict]:
    """Forward + backward on the shared map; the outputs and gradients of each step, and the graphs it
    compiled."""
    records = []
    for step in range(steps):
        fn, z0, (w, x) = staggered_map(seed=step)
        before = graphs()
        z, result = deq(fn, z0)
        (z * torch.linspace(-1.0, 1.0, z.numel(), dtype=z.dtype).view_as(z)).sum().backward()
        # A sample whose residual reached rounding noise (an exact zero in one rounding, 1e-17 in another) has a
        # best iterate defined only to that precision: its nstep is compared where it is above the noise.
        above_noise = result.residual > 1e-13
        records.append(
            {"z": z.detach(), "nstep": result.nstep[above_noise], "w.grad": w.grad, "x.grad": x.grad}
        )
        records[-1]["new_graphs"] = graphs() - before
    return records


@pytest.mark.parametrize("name", list(SOLVERS))
def test_deq_layer_equals_eager_for_every_estimator(name, compiled):
    """``DEQFixedPoint(compile_solve=True)`` in training: the eager outputs and gradients of every estimator;
    the solve reuses the step graph compiled above and the estimators share one compiled cell."""
    cell = CompiledCell({"backend": BACKEND, "dynamic": True})
    for estimator, hyper in ESTIMATORS.items():
        layers = [
            DEQFixedPoint(
                name,
                get_grad_estimator(estimator, **hyper),
                max_iter=40,
                tol=1e-9,
                solver_kwargs={"check_every": 4, **SOLVERS[name]},
                on_failure="ignore",
                compile_solve=flag,
            ).train()
            for flag in (False, True)
        ]
        assert layers[1].compile_cell and layers[1].compile_solve
        layers[1].compiled_solve, layers[1].compiled_cell = compiled[name], cell
        eager, compiled_steps = training_steps(layers[0]), training_steps(layers[1])
        assert compiled_steps[1]["new_graphs"] == 0, f"{estimator}: the second step compiled"
        for step, (e, c) in enumerate(zip(eager, compiled_steps)):
            for key in e.keys() - {"new_graphs"}:
                torch.testing.assert_close(
                    c[key], e[key], rtol=1e-10, atol=1e-12, msg=f"{estimator}, {key}, step {step + 1}"
                )


def test_compile_solve_option_is_checked_and_reconfigurable():
    with pytest.raises(ValueError, match="compile_solve must be True or False"):
        DEQFixedPoint(compile_solve=1)
    deq = DEQFixedPoint(compile_solve=True)
    assert deq.compile_solve and deq.compile_cell and "compile_solve=True" in repr(deq)
    solve = deq.compiled_solve
    deq.reconfigure(solver="broyden", compile_solve=True)
    assert deq.compiled_solve is solve and deq.solver.has_step  # the graphs compiled so far are kept
    deq.reconfigure(solver="broyden")
    assert not deq.compile_solve and not deq.compile_cell


@pytest.mark.parametrize("name", list(SOLVERS))
def test_compiled_step_under_bf16_autocast(name):
    """The step keeps the solver's own algebra outside autocast, as the eager solvers do (``aot_eager``: only
    the capture is at stake here)."""
    gen = torch.Generator().manual_seed(0)
    w = contraction(16, 0.8, gen, dtype=torch.float32)
    x = torch.randn(4, 16, generator=gen)

    def fn(z):
        return torch.tanh(torch.addmm(x, z, w.T))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = get_solver(name).solve(fn, torch.zeros(4, 16), max_iter=40, tol=2e-2)
        result = CompiledSolve({"backend": "aot_eager"}).solve(
            get_solver(name, check_every=4), fn, torch.zeros(4, 16), max_iter=40, tol=2e-2
        )
    assert result.z.dtype == torch.float32 and bool(result.converged.all())
    torch.testing.assert_close(result.z, reference.z, rtol=1e-6, atol=1e-6)
    assert torch.equal(result.nstep, reference.nstep)


def test_solver_without_a_step_is_solved_eagerly():
    """A registered solver without ``init_state``/``step`` still solves under ``compile_solve``."""

    class Plain(Solver):
        def _solve(self, fn, z0, max_iter, tracker):
            z = z0
            for _ in range(max_iter):
                fz, done = evaluate(fn, z, tracker)
                if tracker.should_stop(done):
                    return
                z = fz

    fn, z0, _ = staggered_map()
    assert not Plain.has_step
    before = graphs()
    result = CompiledSolve({"backend": BACKEND}).solve(Plain(), fn, z0, max_iter=80, tol=1e-9)
    reference = Plain().solve(fn, z0, max_iter=80, tol=1e-9)
    assert graphs() == before
    assert_same_per_sample(result, reference)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_next_solve_refills_the_kept_state_without_allocating(name, monkeypatch):
    """A solve of the shapes of the previous one starts from ``init_state(z0)`` written into the kept buffers in
    place: the same values as a fresh state (every entry, after a solve dirtied them), the same tensors, and no
    new state-sized tensor (allocating, zeroing and copying a Broyden history took most of a step)."""
    solver = get_solver(name, **SOLVERS[name])
    solve = CompiledSolve({"backend": BACKEND})
    _, z0, _ = staggered_map()
    kept = solve.state(solver, z0)
    for tensor in kept.values():  # what a finished solve leaves behind
        tensor.fill_(7)
    z1 = torch.randn_like(z0)
    allocated = []
    for factory in ("full", "zeros", "ones", "empty", "eye"):
        original = getattr(torch, factory)

        def spy(*args, original=original, **kwargs):
            out = original(*args, **kwargs)
            if out.device.type != "meta" and out.numel() >= z0.numel():
                allocated.append(tuple(out.shape))
            return out

        monkeypatch.setattr(torch, factory, spy)
    state = solve.state(solver, z1)
    monkeypatch.undo()
    assert allocated == []
    assert all(state[key] is kept[key] for key in kept) and state.keys() == kept.keys()
    fresh = solver.init_state(z1)
    assert state.keys() == fresh.keys()
    for key, tensor in fresh.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), key


def test_broyden_state_is_sized_for_the_budget():
    """With a ``budget`` below ``memory`` the compiled Broyden keeps only the ``budget - 1`` slots a solve can
    write (its passes over the history shrink with them): the eager ``memory``-slot results, for every
    ``max_iter`` up to the budget, from one graph; a solve past the budget gets a state of its own. (Its own
    graphs, ``memory=20``: ``aot_eager``, whose capture and state handling are inductor's, without minutes of C++
    compilation on a cold cache.)"""
    solve = CompiledSolve({"backend": os.environ.get("HF_DEQ_TEST_COMPILE_BACKEND", "aot_eager")})
    solver = get_solver("broyden", memory=20, step_size=0.9)
    fn, z0, _ = staggered_map(batch=3)
    before = graphs()
    for max_iter in (6, 4):
        result = solve.solve(solver, fn, z0, max_iter=max_iter, tol=1e-30, budget=6)
        assert_same_per_sample(result, solver.solve(fn, z0, max_iter=max_iter, tol=1e-30))
        (state,) = solve._kept.values()
        assert state["history"].shape[1] == 2 * 5
    assert graphs() - before <= 1
    result = solve.solve(solver, fn, z0, max_iter=9, tol=1e-30, budget=6)  # past the budget: 8 slots
    assert_same_per_sample(result, solver.solve(fn, z0, max_iter=9, tol=1e-30))
    assert sorted(s["history"].shape[1] for s in solve._kept.values()) == [10, 16]
