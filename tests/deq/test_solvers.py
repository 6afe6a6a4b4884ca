"""Forward solvers: convergence, per-sample bookkeeping, robustness (CPU, tiny sizes).

Oracles are written here from first principles (``torch.linalg.solve`` for affine maps, residuals recomputed
with plain tensor arithmetic) and never call the engine's own residual helpers.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from deq_helpers import contraction  # tests/deq is on sys.path
from torch.utils._python_dispatch import TorchDispatchMode

from hf_deq.deq import GMRES, Anderson, Broyden, DEQFixedPoint, FixedPointIteration, Solver, get_solver

FORWARD_SOLVERS = ["fixed_point", "anderson", "broyden"]


def _residuals(fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-sample ``||f(z) - z||`` and ``||f(z) - z|| / ||f(z)||`` in float64."""
    fz = fn(z).double()
    diff = fz - z.double()
    abs_res = diff.pow(2).sum(dim=1).sqrt()
    return abs_res, abs_res / fz.pow(2).sum(dim=1).sqrt()


def _scaled_tanh_map(a: torch.Tensor, w: torch.Tensor, x: torch.Tensor):
    """``f(z)_b = a_b * tanh(W z_b) + x_b``: Lipschitz constant ``a_b * ||W||``, different per sample."""

    def fn(z):
        return a.unsqueeze(1) * torch.tanh(z @ w.T) + x

    return fn


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_linear_map_matches_exact_solution(name, gen):
    batch, dim = 3, 6
    a = contraction(dim, 0.8, gen)
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    solver = get_solver(name)
    result = solver.solve(
        lambda z: z @ a.T + b, torch.zeros(batch, dim, dtype=torch.float64), max_iter=300, tol=1e-11
    )
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b.T).T
    assert bool(result.converged.all())
    assert result.z.dtype == torch.float64
    torch.testing.assert_close(result.z, exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_nonlinear_map_converges(name, gen):
    batch, dim, din = 4, 8, 3
    w = contraction(dim, 0.9, gen)
    u = torch.randn(dim, din, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, din, generator=gen, dtype=torch.float64)

    def fn(z):
        return torch.tanh(z @ w.T + x @ u.T)

    tol = 1e-9
    result = get_solver(name).solve(fn, torch.zeros(batch, dim, dtype=torch.float64), max_iter=400, tol=tol)
    _, rel = _residuals(fn, result.z)
    assert bool(result.converged.all())
    assert bool((rel <= tol * 1.01).all()), rel
    assert result.nfev < 400


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_per_sample_steps_and_convergence_flags(name, gen):
    """Sample 0 is a constant map (fixed point after one step), sample 2 contracts slowly."""
    dim = 8
    w = contraction(dim, 1.0, gen)
    x = torch.randn(3, dim, generator=gen, dtype=torch.float64)
    fn = _scaled_tanh_map(torch.tensor([0.0, 0.5, 0.97], dtype=torch.float64), w, x)
    z0 = torch.zeros(3, dim, dtype=torch.float64)

    # A budget too small for the slow sample: per-sample flags, the whole budget is spent.
    short = get_solver(name).solve(fn, z0, max_iter=4, tol=1e-10, stop_mode="abs")
    assert short.nfev == 4
    assert short.converged.tolist()[0] is True
    assert short.converged.tolist()[2] is False
    assert int(short.nstep[0]) == 2  # z_1 = f(z_0) is exact; evaluated by the 2nd call
    assert int(short.nstep[2]) > 2

    # A budget large enough for everyone: the batch stops as soon as every sample's best is below tol.
    tol = 1e-8
    full = get_solver(name).solve(fn, z0, max_iter=2000, tol=tol, stop_mode="abs", return_trace=True)
    assert bool(full.converged.all())
    assert full.nfev < 2000
    assert int(full.nstep[0]) == 2
    assert int(full.nstep[2]) > int(full.nstep[0])
    trace = full.trace
    assert trace.shape == (full.nfev, 3)
    best_so_far = torch.cummin(trace, dim=0).values
    assert bool((best_so_far[-1] <= tol).all())
    assert not bool((best_so_far[-2] <= tol).all())  # it did not run one step longer than needed
    # The reported residual is the minimum of the trace, reached at step nstep.
    for b in range(3):
        assert float(full.abs_residual[b]) == pytest.approx(float(trace[:, b].min()), rel=1e-6, abs=1e-30)
        assert float(trace[int(full.nstep[b]) - 1, b]) == pytest.approx(
            float(full.abs_residual[b]), rel=1e-6, abs=1e-30
        )


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
@pytest.mark.parametrize("stop_mode", ["rel", "abs"])
def test_returns_best_iterate_not_last(name, stop_mode, gen):
    """After 6 calls the map turns bad (a large constant shift): the best iterate is one of the first six."""
    batch, dim = 3, 5
    w = contraction(dim, 0.6, gen)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)

    def good(z):
        return torch.tanh(z @ w.T + x)

    calls = {"n": 0}
    seen = []

    def fn(z):
        calls["n"] += 1
        seen.append(z.clone())
        return good(z) if calls["n"] <= 6 else z + 10.0

    result = get_solver(name).solve(
        fn, torch.zeros(batch, dim, dtype=torch.float64), max_iter=15, tol=0.0, stop_mode=stop_mode
    )
    assert result.nfev == 15 == calls["n"]
    assert bool((result.nstep >= 1).all()) and bool((result.nstep <= 6).all())
    abs_res, rel_res = _residuals(good, result.z)
    torch.testing.assert_close(result.abs_residual.double(), abs_res, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(result.rel_residual.double(), rel_res, rtol=1e-5, atol=1e-12)
    # The returned z is exactly the iterate evaluated at call nstep.
    for b in range(batch):
        torch.testing.assert_close(result.z[b], seen[int(result.nstep[b]) - 1][b], rtol=0, atol=0)
    assert not torch.equal(result.z, seen[-1])


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_result_has_no_autograd_graph(name, gen):
    dim = 4
    w = torch.nn.Parameter(contraction(dim, 0.5, gen))
    x = torch.randn(2, dim, dtype=torch.float64, requires_grad=True)

    def fn(z):
        return torch.tanh(z @ w.T + x)

    assert torch.is_grad_enabled()
    z0 = torch.zeros(2, dim, dtype=torch.float64, requires_grad=True)
    result = get_solver(name).solve(fn, z0, max_iter=30, tol=1e-8, return_trace=True)
    for t in (result.z, result.abs_residual, result.rel_residual, result.trace):
        assert not t.requires_grad
        assert t.grad_fn is None


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_trace_shape_and_nfev_bounded(name, gen):
    batch, dim = 3, 4
    w = contraction(dim, 0.99, gen)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    calls = {"n": 0}

    def fn(z):
        calls["n"] += 1
        return torch.tanh(z @ w.T) + x

    z0 = torch.zeros(batch, dim, dtype=torch.float64)
    result = get_solver(name).solve(fn, z0, max_iter=7, tol=0.0, return_trace=True)
    assert result.nfev == 7 == calls["n"]
    assert result.trace is not None and result.trace.shape == (7, batch)
    assert bool((result.trace[0] - 1.0).abs().max() < 1e-6)  # rel residual of z0 = 0 is exactly 1
    assert get_solver(name).solve(fn, z0, max_iter=7, tol=0.0).trace is None


def test_gmres_solves_affine_map(gen):
    """GMRES solves ``u = A u + b`` even when ``A`` is not a contraction (fixed-point iteration diverges)."""
    batch, dim = 3, 12
    a = contraction(dim, 1.5, gen)
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    solver = get_solver("gmres")
    assert isinstance(solver, GMRES)
    result = solver.solve(
        lambda u: u @ a.T + b, torch.zeros(batch, dim, dtype=torch.float64), max_iter=40, tol=1e-12
    )
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b.T).T
    torch.testing.assert_close(result.z, exact, rtol=0, atol=1e-8)
    assert bool(result.converged.all())
    # Non-zero start and restarts still find the solution.
    z0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    restarted = get_solver("gmres", restart=4).solve(lambda u: u @ a.T + b, z0, max_iter=200, tol=1e-12)
    torch.testing.assert_close(restarted.z, exact, rtol=0, atol=1e-7)


def test_gmres_refused_as_forward_solver():
    with pytest.raises(ValueError, match="affine"):
        DEQFixedPoint(solver="gmres")
    with pytest.raises(ValueError, match="affine"):
        DEQFixedPoint(solver=GMRES(restart=5))


def test_anderson_under_bf16_autocast(gen):
    batch, dim = 4, 16
    w = contraction(dim, 0.8, gen, dtype=torch.float32)
    x = torch.randn(batch, dim, generator=gen)

    def fn(z):
        return torch.tanh(torch.addmm(x, z, w.T))  # addmm runs in bf16 under autocast

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fn(torch.zeros(batch, dim)).dtype == torch.bfloat16  # the map really runs in bf16
        result = get_solver("anderson").solve(fn, torch.zeros(batch, dim), max_iter=40, tol=2e-2)
    assert result.z.dtype == torch.float32
    assert bool(torch.isfinite(result.z).all())
    assert bool(result.converged.all())
    _, rel = _residuals(fn, result.z)  # recomputed outside autocast, in float64
    assert bool((rel < 5e-2).all()), rel


@pytest.mark.parametrize("regularization", [1e-4, 0.0])
@pytest.mark.parametrize(
    "case",
    ["memory_larger_than_dim", "constant_map", "identical_residuals", "identity_map"],
)
def test_anderson_singular_history_never_raises(case, regularization, gen):
    batch = 3
    dim = 2
    w = contraction(dim, 0.7, gen)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    fns = {
        "memory_larger_than_dim": lambda z: torch.tanh(z @ w.T + x),
        "constant_map": lambda z: c.clone(),
        "identical_residuals": lambda z: z + c,  # no fixed point, every residual identical
        "identity_map": lambda z: z.clone(),
    }
    fn = fns[case]
    z0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    solver = Anderson(memory=5, regularization=regularization)
    result = solver.solve(fn, z0, max_iter=25, tol=1e-10)
    assert bool(torch.isfinite(result.z).all())
    assert bool(torch.isfinite(result.abs_residual).all())
    if case == "memory_larger_than_dim":
        assert bool(result.converged.all())
        _, rel = _residuals(fn, result.z)
        assert bool((rel <= 1.01e-10).all())
    elif case == "constant_map":
        torch.testing.assert_close(result.z, c, rtol=0, atol=1e-12)
    elif case == "identical_residuals":
        assert result.nfev == 25
        assert not bool(result.converged.any())
        torch.testing.assert_close(result.abs_residual.double(), c.norm(dim=1), rtol=1e-6, atol=0)
    else:
        torch.testing.assert_close(result.z, z0, rtol=0, atol=0)
        assert bool(result.converged.all()) and result.nfev == 1


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_nan_in_one_sample_keeps_best_finite_iterate(name, gen):
    batch, dim = 3, 5
    a = contraction(dim, 0.5, gen)
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)

    def clean(z):
        return z @ a.T + b

    calls = {"n": 0}

    def fn(z):
        calls["n"] += 1
        out = clean(z)
        if calls["n"] > 3:
            out = out.clone()
            out[1] = float("nan")
        return out

    z0 = torch.zeros(batch, dim, dtype=torch.float64)
    result = get_solver(name).solve(fn, z0, max_iter=80, tol=1e-12, stop_mode="abs")
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b.T).T
    # The other samples are unaffected.
    for s in (0, 2):
        torch.testing.assert_close(result.z[s], exact[s], rtol=0, atol=1e-10)
        assert bool(result.converged[s])
    # The poisoned sample keeps a finite iterate from before the NaNs, with its true residual (or inf).
    assert bool(torch.isfinite(result.z[1]).all())
    assert not bool(result.converged[1])
    assert 1 <= int(result.nstep[1]) <= 3
    reported = float(result.abs_residual[1])
    assert reported == float("inf") or reported == pytest.approx(
        float(_residuals(clean, result.z)[0][1]), rel=1e-5
    )
    assert reported > 1e-12
    assert result.nfev == 80


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_transient_nan_sample_recovers(name, gen):
    """A single NaN output (one call, one sample) does not poison that sample for the rest of the solve."""
    batch, dim = 3, 5
    a = contraction(dim, 0.5, gen)
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    calls = {"n": 0}

    def fn(z):
        calls["n"] += 1
        out = z @ a.T + b
        if calls["n"] == 4:
            out = out.clone()
            out[1, 2] = float("nan")
        return out

    result = get_solver(name).solve(fn, torch.zeros(batch, dim, dtype=torch.float64), max_iter=150, tol=1e-12)
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b.T).T
    assert bool(result.converged.all())
    torch.testing.assert_close(result.z, exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
@pytest.mark.parametrize("stop_mode", ["rel", "abs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_output_gives_infinite_residual(name, stop_mode, dtype, gen):
    """A sample whose f(z) is +inf at every call has no finite residual: it must be reported as inf (not a
    large finite number) and its state must stay the finite starting point."""
    batch, dim = 3, 4
    w = contraction(dim, 0.5, gen, dtype=dtype)
    x = torch.randn(batch, dim, generator=gen, dtype=dtype)

    def fn(z):
        out = torch.tanh(z @ w.T + x)
        out = out.clone()
        out[1] = float("inf")
        return out

    z0 = torch.zeros(batch, dim, dtype=dtype)
    result = get_solver(name).solve(fn, z0, max_iter=30, tol=1e-5, stop_mode=stop_mode)
    assert float(result.abs_residual[1]) == float("inf")
    assert float(result.rel_residual[1]) == float("inf")
    assert not bool(result.converged[1])
    assert bool(result.converged[0]) and bool(result.converged[2])
    torch.testing.assert_close(result.z[1], z0[1], rtol=0, atol=0)


class _LiveTensorBytes(TorchDispatchMode):
    """Records every tensor produced by an op and, on ``sample()``, the bytes of the distinct storages still
    alive. The peak over a solve approximates the solver's working memory."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref] = []
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.refs.append(weakref.ref(t))
        return out

    def sample(self) -> None:
        self.refs = [r for r in self.refs if r() is not None]
        storages = {}
        for r in self.refs:
            t = r()
            if t is not None:
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        self.peak = max(self.peak, sum(storages.values()))


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_working_memory_independent_of_max_iter(name, gen):
    """The live tensors a solver holds do not grow with ``max_iter`` (Broyden's ring buffer, Anderson's
    memory): a map with no fixed point forces every solve to use its whole budget."""
    batch, dim = 2, 16
    w = contraction(dim, 1.0, gen, dtype=torch.float32)
    kwargs = {"broyden": {"memory": 3}, "anderson": {"memory": 3}}.get(name, {})
    peaks = {}
    for max_iter in (20, 200):
        mode = _LiveTensorBytes()

        def fn(z, mode=mode):
            mode.sample()
            return z + 1.0 + 0.5 * torch.tanh(z @ w.T)  # f(z) - z >= 0.5 elementwise: no fixed point

        with mode:
            result = get_solver(name, **kwargs).solve(fn, torch.zeros(batch, dim), max_iter=max_iter, tol=0.0)
        assert result.nfev == max_iter
        assert bool(torch.isfinite(result.z).all())
        peaks[max_iter] = mode.peak
    assert peaks[20] > 0
    assert peaks[200] <= peaks[20] * 1.1 + 1024, peaks


def test_broyden_memory_is_a_hyperparameter(gen):
    solver = get_solver("broyden", memory=3)
    assert isinstance(solver, Broyden) and solver.memory == 3
    batch, dim = 3, 10
    w = contraction(dim, 0.9, gen)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)

    def fn(z):
        return torch.tanh(z @ w.T + x)

    result = solver.solve(fn, torch.zeros(batch, dim, dtype=torch.float64), max_iter=200, tol=1e-10)
    assert bool(result.converged.all())
    _, rel = _residuals(fn, result.z)
    assert bool((rel <= 1.01e-10).all())


def test_fixed_point_damping(gen):
    """Damped iteration z+ = d f(z) + (1-d) z converges on a map where plain iteration oscillates forever."""
    dim = 3
    b = torch.randn(2, dim, generator=gen, dtype=torch.float64)

    def fn(z):
        return -z + b  # fixed point b/2; plain iteration cycles between z0 and b - z0

    z0 = torch.zeros(2, dim, dtype=torch.float64)
    plain = FixedPointIteration().solve(fn, z0, max_iter=50, tol=1e-10)
    damped = FixedPointIteration(damping=0.5).solve(fn, z0, max_iter=50, tol=1e-10)
    assert not bool(plain.converged.any())
    assert bool(damped.converged.all())
    torch.testing.assert_close(damped.z, b / 2, rtol=0, atol=1e-10)


def test_solve_rejects_bad_state_shape():
    with pytest.raises(ValueError, match="shape"):
        FixedPointIteration().solve(lambda z: z, torch.zeros(2, 3, 4), max_iter=3, tol=1e-3)
    with pytest.raises(ValueError, match="shape"):
        FixedPointIteration().solve(lambda z: z[:, :2], torch.zeros(2, 3), max_iter=3, tol=1e-3)


def test_solver_base_is_abstract():
    with pytest.raises(NotImplementedError):
        Solver().solve(lambda z: z, torch.zeros(1, 2), max_iter=1, tol=0.0)


@pytest.mark.parametrize("name", FORWARD_SOLVERS)
def test_reused_solver_returns_independent_results(name, gen):
    """A solver keeps its CPU buffers for the next solve: a result must not share memory with them, so a
    later solve on another input leaves the earlier result as it was; copies of the solver carry no buffers."""
    import copy
    import pickle

    dim = 6
    w = contraction(dim, 0.7, gen)
    x1 = torch.randn(3, dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(3, dim, generator=gen, dtype=torch.float64)
    solver = get_solver(name)
    z0 = torch.zeros(3, dim, dtype=torch.float64)
    first = solver.solve(lambda z: torch.tanh(z @ w.T + x1), z0, max_iter=40, tol=1e-10)
    kept = first.z.clone()
    second = solver.solve(lambda z: torch.tanh(z @ w.T + x2), z0, max_iter=40, tol=1e-10)
    assert torch.equal(first.z, kept)
    assert not torch.allclose(first.z, second.z)
    fresh = get_solver(name).solve(lambda z: torch.tanh(z @ w.T + x2), z0, max_iter=40, tol=1e-10)
    torch.testing.assert_close(second.z, fresh.z, rtol=0, atol=0)
    for clone in (copy.deepcopy(solver), pickle.loads(pickle.dumps(solver))):
        assert not any(isinstance(v, (dict, torch.Tensor)) for v in vars(clone).values())
        assert repr(clone) == repr(solver)
