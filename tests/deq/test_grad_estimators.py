"""Gradient estimators through ``DEQFixedPoint`` against oracles written by hand (float64, CPU).

Linear DEQ: ``f(z) = W z + U x`` with ``||W||_2 < 1`` has ``z* = (I-W)^{-1} U x``, so for ``L = sum_b c_b . z*_b``:
``dL/dx_b = U^T (I-W)^{-T} c_b``, ``dL/dW = sum_b (I-W)^{-T} c_b z*_b^T``, ``dL/dU = sum_b (I-W)^{-T} c_b x_b^T``.
Nonlinear DEQ: ``f(z) = tanh(W z + U x + b)`` with ``J = diag(1 - z*^2) W`` at the fixed point.
"""

from __future__ import annotations

import pytest
import torch
from deq_helpers import ESTIMATORS, Cell, contraction  # tests/deq is on sys.path
from torch import nn

from hf_deq.deq import DEQFixedPoint, get_grad_estimator

DT = torch.float64
BATCH, DIM, DIN = 3, 5, 4


class Problem:
    """Leaf tensors of a small DEQ, with fresh copies for each gradient evaluation."""

    def __init__(self, seed: int, norm: float, nonlinear: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.nonlinear = nonlinear
        self.w0 = contraction(DIM, norm, g)
        self.u0 = torch.randn(DIM, DIN, generator=g, dtype=DT)
        self.b0 = 0.1 * torch.randn(DIM, generator=g, dtype=DT)
        self.x0 = torch.randn(BATCH, DIN, generator=g, dtype=DT)
        self.c = torch.randn(BATCH, DIM, generator=g, dtype=DT)

    def leaves(self):
        return tuple(t.clone().requires_grad_() for t in (self.w0, self.u0, self.b0, self.x0))

    def make_fn(self, w, u, b, x):
        if self.nonlinear:
            return lambda z: torch.tanh(z @ w.T + x @ u.T + b)
        return lambda z: z @ w.T + x @ u.T

    def reference_fixed_point(self, w=None, x=None) -> torch.Tensor:
        """Independent tight solve: 500 plain iterations (linear: exact solve)."""
        w = self.w0 if w is None else w
        x = self.x0 if x is None else x
        with torch.no_grad():
            if not self.nonlinear:
                rhs = x @ self.u0.T
                return torch.linalg.solve(torch.eye(DIM, dtype=DT) - w, rhs.T).T
            z = torch.zeros(BATCH, DIM, dtype=DT)
            for _ in range(500):
                z = torch.tanh(z @ w.T + x @ self.u0.T + self.b0)
            return z

    def loss_value(self, w=None, x=None) -> float:
        return float((self.c * self.reference_fixed_point(w, x)).sum())

    def engine_grads(self, estimator, solver="anderson", z0=None):
        """``(z, {name: grad})`` from one training forward/backward through ``DEQFixedPoint``."""
        w, u, b, x = self.leaves()
        deq = DEQFixedPoint(solver, estimator, max_iter=200, tol=1e-13, stop_mode="abs")
        deq.train()
        if z0 is None:
            z0 = torch.zeros(BATCH, DIM, dtype=DT)
        z, result = deq(self.make_fn(w, u, b, x), z0)
        (self.c * z).sum().backward()
        grads = {"w": w.grad, "u": u.grad, "x": x.grad}
        if self.nonlinear:
            grads["b"] = b.grad
        return z, result, grads


def _assert_grads_close(actual: dict, expected: dict, atol: float) -> None:
    assert set(expected) <= set(actual)
    for name, value in expected.items():
        assert actual[name] is not None, name
        torch.testing.assert_close(actual[name], value, rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def _linear_analytic(p: Problem) -> dict:
    inv = torch.linalg.inv(torch.eye(DIM, dtype=DT) - p.w0)
    z_star = p.x0 @ (inv @ p.u0).T
    adj = p.c @ inv  # rows: ((I-W)^{-T} c_b)^T
    return {"x": adj @ p.u0, "w": adj.T @ z_star, "u": adj.T @ p.x0}


def _nonlinear_preactivation_grads(p: Problem, z_star: torch.Tensor, w_vec: torch.Tensor) -> dict:
    """Given ``w_vec`` = the cotangent at the pre-activation ``a = W z + U x + b``, the parameter grads."""
    return {"x": w_vec @ p.u0, "w": w_vec.T @ z_star, "u": w_vec.T @ p.x0, "b": w_vec.sum(0)}


# ----------------------------------------------------------------------------------------------- implicit


@pytest.mark.parametrize("backward_solver", ["gmres", "anderson", "broyden", "fixed_point"])
@pytest.mark.parametrize("forward_solver", ["anderson", "broyden"])
def test_implicit_matches_analytic_linear(backward_solver, forward_solver):
    p = Problem(seed=0, norm=0.5, nonlinear=False)
    estimator = get_grad_estimator("implicit", solver=backward_solver, max_iter=200, tol=1e-13)
    z, result, grads = p.engine_grads(estimator, solver=forward_solver)
    assert bool(result.converged.all())
    torch.testing.assert_close(z.detach(), p.reference_fixed_point(), rtol=0, atol=1e-10)
    _assert_grads_close(grads, _linear_analytic(p), atol=1e-8)


def test_implicit_default_backward_is_gmres_and_accurate():
    p = Problem(seed=1, norm=0.7, nonlinear=False)
    estimator = get_grad_estimator("implicit", tol=1e-12)
    assert type(estimator.solver).__name__ == "GMRES"
    _, _, grads = p.engine_grads(estimator)
    _assert_grads_close(grads, _linear_analytic(p), atol=1e-8)
    # The backward solve is recorded and converged.
    assert estimator.last_backward is not None and bool(estimator.last_backward.converged.all())


@pytest.mark.parametrize("backward_solver", ["gmres", "anderson", "broyden", "fixed_point"])
def test_implicit_spends_no_product_on_the_zero_start(backward_solver):
    """The backward solve starts at ``u = 0``, where ``J^T 0 + g = g`` is known: every ``J^T v`` product the
    estimator takes is one the solver needed (``products == nfev - 1``), and the gradient is still exact."""
    from hf_deq.deq.grad import vjp

    p = Problem(seed=4, norm=0.5, nonlinear=False)
    estimator = get_grad_estimator("implicit", solver=backward_solver, max_iter=200, tol=1e-12)
    products = []
    original = vjp.JacobianTransposeProduct.__call__

    def counted(self, v):
        products.append(v)
        return original(self, v)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vjp.JacobianTransposeProduct, "__call__", counted)
        _, _, grads = p.engine_grads(estimator)
    _assert_grads_close(grads, _linear_analytic(p), atol=1e-8)
    assert len(products) == estimator.last_backward.nfev - 1 > 0
    assert all(bool(v.any()) for v in products)  # no product with the zero vector


def test_implicit_matches_finite_differences_nonlinear():
    p = Problem(seed=2, norm=0.6, nonlinear=True)
    _, result, grads = p.engine_grads(get_grad_estimator("implicit", max_iter=60, tol=1e-13))
    assert bool(result.converged.all())
    h = 1e-5
    for i, j in [(0, 0), (1, 3), (2, 1)]:
        xp, xm = p.x0.clone(), p.x0.clone()
        xp[i, j] += h
        xm[i, j] -= h
        fd = (p.loss_value(x=xp) - p.loss_value(x=xm)) / (2 * h)
        assert float(grads["x"][i, j]) == pytest.approx(fd, abs=1e-7), ("x", i, j)
    for i, j in [(0, 0), (2, 4), (4, 1)]:
        wp, wm = p.w0.clone(), p.w0.clone()
        wp[i, j] += h
        wm[i, j] -= h
        fd = (p.loss_value(w=wp) - p.loss_value(w=wm)) / (2 * h)
        assert float(grads["w"][i, j]) == pytest.approx(fd, abs=1e-7), ("w", i, j)


# ----------------------------------------------------------------------------------------------- NPG


def _neumann(b_mats: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    """``v_b = sum_{i<k} (B_b^T)^i g_b`` with explicit matrix powers."""
    out = torch.zeros_like(g)
    for bi in range(g.shape[0]):
        power = torch.eye(DIM, dtype=DT)
        for _ in range(k):
            out[bi] += power @ g[bi]
            power = power @ b_mats[bi].T
    return out


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_npg_equals_explicit_neumann_series_linear(k, lam):
    p = Problem(seed=3, norm=0.8, nonlinear=False)
    z, _, grads = p.engine_grads(get_grad_estimator("npg", steps=k, damping=lam))
    z_star = p.reference_fixed_point()
    torch.testing.assert_close(z.detach(), z_star, rtol=0, atol=1e-10)  # forward value is z*
    b_mats = (lam * p.w0 + (1 - lam) * torch.eye(DIM, dtype=DT)).expand(BATCH, DIM, DIM)
    v = lam * _neumann(b_mats, p.c, k)
    expected = {"x": v @ p.u0, "w": v.T @ z_star, "u": v.T @ p.x0}
    _assert_grads_close(grads, expected, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_npg_equals_explicit_neumann_series_nonlinear(k, lam):
    p = Problem(seed=4, norm=0.8, nonlinear=True)
    _, _, grads = p.engine_grads(get_grad_estimator("npg", steps=k, damping=lam))
    z_star = p.reference_fixed_point()
    # J_b = diag(1 - z*_b^2) W, built by torch.autograd.functional.jacobian per sample as a cross-check.
    s = 1 - z_star.pow(2)
    jac = s.unsqueeze(2) * p.w0.unsqueeze(0)
    for bi in range(BATCH):
        f_b = lambda zb, bi=bi: torch.tanh(p.w0 @ zb + p.u0 @ p.x0[bi] + p.b0)  # noqa: E731
        torch.testing.assert_close(torch.autograd.functional.jacobian(f_b, z_star[bi]), jac[bi])
    b_mats = lam * jac + (1 - lam) * torch.eye(DIM, dtype=DT)
    v = lam * _neumann(b_mats, p.c, k)
    _assert_grads_close(grads, _nonlinear_preactivation_grads(p, z_star, s * v), atol=1e-9)


# ----------------------------------------------------------------------------------------------- UPG / one-step


def _reference_unroll(p: Problem, k: int, lam: float):
    """UPG written out: from the (detached) fixed point, ``k`` damped steps under plain autograd."""
    w, u, b, x = p.leaves()
    h = p.reference_fixed_point()
    for _ in range(k):
        fh = torch.tanh(h @ w.T + x @ u.T + b) if p.nonlinear else h @ w.T + x @ u.T
        h = lam * fh + (1 - lam) * h
    (p.c * h).sum().backward()
    grads = {"w": w.grad, "u": u.grad, "x": x.grad}
    if p.nonlinear:
        grads["b"] = b.grad
    return h.detach(), grads


@pytest.mark.parametrize("nonlinear", [False, True])
@pytest.mark.parametrize(("k", "lam"), [(1, 1.0), (2, 0.5), (5, 0.8), (9, 1.0)])
def test_upg_equals_reference_unroll(k, lam, nonlinear):
    p = Problem(seed=5, norm=0.7, nonlinear=nonlinear)
    z, _, grads = p.engine_grads(get_grad_estimator("upg", steps=k, damping=lam))
    h_ref, expected = _reference_unroll(p, k, lam)
    torch.testing.assert_close(z.detach(), h_ref, rtol=0, atol=1e-10)
    _assert_grads_close(grads, expected, atol=1e-9)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_one_step_equals_upg_1_1(nonlinear):
    p = Problem(seed=6, norm=0.7, nonlinear=nonlinear)
    one = get_grad_estimator("one_step")
    assert (one.steps, one.damping) == (1, 1.0)
    z1, _, g1 = p.engine_grads(one)
    z2, _, g2 = p.engine_grads(get_grad_estimator("upg", steps=1, damping=1.0))
    torch.testing.assert_close(z1, z2, rtol=0, atol=1e-12)
    _assert_grads_close(g1, g2, atol=1e-12)
    if not nonlinear:  # JFB on a linear map: dL/dx = U^T c, dL/dW = c z*^T
        z_star = p.reference_fixed_point()
        _assert_grads_close(g1, {"x": p.c @ p.u0, "w": p.c.T @ z_star, "u": p.c.T @ p.x0}, atol=1e-9)


def test_one_step_takes_no_hyperparameters():
    with pytest.raises(TypeError):
        get_grad_estimator("one_step", steps=3)


@pytest.mark.parametrize("name", ["upg", "npg"])
def test_phantom_gradients_approach_implicit(name):
    p = Problem(seed=7, norm=0.7, nonlinear=True)
    _, _, exact = p.engine_grads(get_grad_estimator("implicit", max_iter=60, tol=1e-14))
    errors = []
    for k in (1, 5, 20, 80):
        _, _, approx = p.engine_grads(get_grad_estimator(name, steps=k, damping=1.0))
        errors.append(max(float((approx[n] - exact[n]).abs().max()) for n in exact))
    assert errors[0] > 1e-3  # the one-step estimate really is different
    assert errors[1] < errors[0] and errors[2] < errors[1] and errors[3] < errors[2], errors
    assert errors[3] < 1e-6, errors


# ----------------------------------------------------------------------------------------------- unrolled


@pytest.mark.parametrize("nonlinear", [False, True])
def test_unrolled_equals_backprop_through_iterations_from_z0(nonlinear):
    p = Problem(seed=8, norm=0.9, nonlinear=nonlinear)
    steps = 4
    z0 = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(99), dtype=DT)
    z, result, grads = p.engine_grads(get_grad_estimator("unrolled", steps=steps), z0=z0)

    w, u, b, x = p.leaves()
    h = z0
    for _ in range(steps):
        h = torch.tanh(h @ w.T + x @ u.T + b) if nonlinear else h @ w.T + x @ u.T
    (p.c * h).sum().backward()
    expected = {"w": w.grad, "u": u.grad, "x": x.grad}
    if nonlinear:
        expected["b"] = b.grad
    torch.testing.assert_close(z.detach(), h.detach(), rtol=0, atol=1e-12)
    _assert_grads_close(grads, expected, atol=1e-12)
    # Not a fixed point: the reported residual is the residual of the unrolled state.
    assert bool((result.nstep == steps).all())
    fn = p.make_fn(p.w0, p.u0, p.b0, p.x0)
    res = (fn(h.detach()) - h.detach()).norm(dim=1)
    torch.testing.assert_close(result.abs_residual.double(), res, rtol=1e-5, atol=1e-12)


# ----------------------------------------------------------------------------------------------- every parameter


def _check_all_grads(tensors: dict) -> None:
    for name, t in tensors.items():
        assert t.grad is not None, f"{name} got no gradient"
        assert bool(torch.isfinite(t.grad).all()), f"{name} has a non-finite gradient"
        assert float(t.grad.abs().max()) > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_parameter_and_input_gets_a_gradient(name):
    torch.manual_seed(0)
    cell = Cell(6).double()
    injection = torch.randn(2, 6, dtype=DT, requires_grad=True)
    deq = DEQFixedPoint("anderson", get_grad_estimator(name, **ESTIMATORS[name]), max_iter=50, tol=1e-8)
    z, _ = deq(lambda z: cell(z, injection), torch.zeros(2, 6, dtype=DT))
    assert z.requires_grad
    (z.pow(2).sum() + z.sum()).backward()
    _check_all_grads({**dict(cell.named_parameters()), "injection": injection})


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_gradient_flows_through_injection_module(name):
    """``f`` closes over a tensor computed from another module: that module and its input get gradients."""
    torch.manual_seed(1)
    encoder = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6)).double()
    cell = Cell(6).double()
    x = torch.randn(2, 3, dtype=DT, requires_grad=True)
    injection = encoder(x)
    deq = DEQFixedPoint("broyden", get_grad_estimator(name, **ESTIMATORS[name]), max_iter=50, tol=1e-8)
    z, _ = deq(lambda z: cell(z, injection), torch.zeros(2, 6, dtype=DT))
    (z.pow(2).sum() + z.sum()).backward()
    params = {f"encoder.{n}": t for n, t in encoder.named_parameters()}
    params.update({f"cell.{n}": t for n, t in cell.named_parameters()})
    _check_all_grads({**params, "x": x})


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "kwargs", "field", "value"),
    [
        ("upg", {"damping": 0}, "damping", "0"),
        ("upg", {"damping": 1.5}, "damping", "1.5"),
        ("npg", {"damping": -0.25}, "damping", "-0.25"),
        ("upg", {"steps": 0}, "steps", "0"),
        ("npg", {"steps": -3}, "steps", "-3"),
        ("unrolled", {"steps": 2.5}, "steps", "2.5"),
        ("implicit", {"max_iter": 0}, "max_iter", "0"),
        ("implicit", {"tol": -1.0}, "tol", "-1.0"),
    ],
)
def test_estimator_hyperparameter_validation(name, kwargs, field, value):
    with pytest.raises(ValueError) as info:
        get_grad_estimator(name, **kwargs)
    message = str(info.value)
    assert field in message and f"got {value}" in message, message
