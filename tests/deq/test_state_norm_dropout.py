"""``state.py`` (multiscale packing), ``norm.py`` (weight / spectral norm inside a DEQ) and ``dropout.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_deq.deq import (
    DEQFixedPoint,
    StateSpec,
    VariationalDropout,
    apply_spectral_norm,
    apply_weight_norm,
    get_grad_estimator,
    new_dropout_masks,
    pack_state,
    remove_norm,
    unpack_state,
)

# ----------------------------------------------------------------------------------------------- state


def _multiscale(batch: int = 2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, 3, 4, 4, generator=g, dtype=dtype),
        torch.randn(batch, 6, 2, 2, generator=g, dtype=dtype),
        torch.randn(batch, 5, generator=g, dtype=dtype),
    ]


def test_pack_unpack_round_trip():
    tensors = _multiscale()
    z, spec = pack_state(tensors)
    assert isinstance(spec, StateSpec)
    assert spec.shapes == ((3, 4, 4), (6, 2, 2), (5,))
    assert spec.sizes == (48, 24, 5) and spec.dim == 77
    assert z.shape == (2, 77)
    # Layout: each sample's tensors flattened in order, one after the other.
    torch.testing.assert_close(z[1, :48], tensors[0][1].flatten(), rtol=0, atol=0)
    torch.testing.assert_close(z[0, 48:72], tensors[1][0].flatten(), rtol=0, atol=0)
    torch.testing.assert_close(z[1, 72:], tensors[2][1], rtol=0, atol=0)
    parts = unpack_state(z, spec)
    assert len(parts) == 3
    for part, original in zip(parts, tensors):
        assert part.shape == original.shape
        torch.testing.assert_close(part, original, rtol=0, atol=0)
    # The spec is per sample: it unpacks a state with another batch size.
    z5 = torch.arange(5 * 77, dtype=torch.float32).reshape(5, 77)
    parts5 = unpack_state(z5, spec)
    assert [tuple(p.shape) for p in parts5] == [(5, 3, 4, 4), (5, 6, 2, 2), (5, 5)]
    assert float(parts5[1][2, 0, 0, 0]) == 2 * 77 + 48


def test_unpack_gives_views_and_gradients_flow():
    tensors = [t.requires_grad_() for t in _multiscale(dtype=torch.float64)]
    z, spec = pack_state(tensors)
    parts = unpack_state(z, spec)
    assert parts[0].data_ptr() == z.data_ptr()
    weights = [torch.full_like(t, float(i + 1)) for i, t in enumerate(tensors)]
    sum((p * w).sum() for p, w in zip(parts, weights)).backward()
    for t, w in zip(tensors, weights):
        torch.testing.assert_close(t.grad, w, rtol=0, atol=0)


def test_state_shape_errors():
    z, spec = pack_state(_multiscale())
    with pytest.raises(ValueError, match="77"):
        unpack_state(z[:, :76], spec)
    with pytest.raises(ValueError, match="77"):
        unpack_state(z.reshape(2, 7, 11), spec)
    with pytest.raises(ValueError, match="batch"):
        pack_state([torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(ValueError):
        pack_state([])


def test_multiscale_deq_through_packed_state():
    """A two-resolution cell on a packed state: the solve converges and every scale's parameters learn."""
    torch.manual_seed(0)
    hi = nn.Conv2d(2, 2, 3, padding=1)
    lo = nn.Linear(3, 3)
    down = nn.Linear(2 * 4 * 4, 3)
    x = torch.randn(2, 2, 4, 4, requires_grad=True)
    _, spec = pack_state([torch.zeros(2, 2, 4, 4), torch.zeros(2, 3)])

    def fn(z):
        h, lw = unpack_state(z, spec)
        h_new = 0.4 * torch.tanh(hi(h) + x)
        l_new = 0.4 * torch.tanh(lo(lw) + down(h.flatten(1)))
        return pack_state([h_new, l_new])[0]

    deq = DEQFixedPoint("broyden", "implicit", max_iter=60, tol=1e-6)
    z, result = deq(fn, torch.zeros(2, spec.dim))
    assert bool(result.converged.all())
    h, lw = unpack_state(z, spec)
    (h.sum() + lw.pow(2).sum() + lw.sum()).backward()
    for module in (hi, lo, down):
        for p in module.parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().max()) > 0
    assert x.grad is not None and float(x.grad.abs().max()) > 0


# ----------------------------------------------------------------------------------------------- norm


class NormCell(nn.Module):
    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        with torch.no_grad():
            self.lin.weight.mul_(scale / torch.linalg.matrix_norm(self.lin.weight, ord=2))

    def forward(self, z, injection):
        return 0.7 * torch.tanh(self.lin(z) + injection)


def _train(cell, encoder, estimator: str, n_steps: int, **estimator_kwargs):
    """``n_steps`` plain training steps through ``DEQFixedPoint``; returns per-step stats."""
    deq = DEQFixedPoint("anderson", get_grad_estimator(estimator, **estimator_kwargs), max_iter=40, tol=1e-6)
    opt = torch.optim.SGD([*cell.parameters(), *encoder.parameters()], lr=0.05)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    target = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    norm_module = cell.lin.parametrizations.weight[0]
    weight_computations = {"n": 0}
    handle = norm_module.register_forward_hook(
        lambda *args: weight_computations.__setitem__("n", weight_computations["n"] + 1)
    )
    stats = []
    try:
        for _ in range(n_steps):
            injection = encoder(x)
            calls = {"n": 0}

            def fn(z, injection=injection, calls=calls):
                calls["n"] += 1
                return cell(z, injection)

            weight_computations["n"] = 0
            z, result = deq(fn, torch.zeros(4, 6))
            loss = (z - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            grads = {n: p.grad.clone() for n, p in cell.named_parameters()}
            opt.step()
            stats.append((calls["n"], weight_computations["n"], grads, float(loss.detach())))
    finally:
        handle.remove()
    return stats


@pytest.mark.parametrize("estimator", ["implicit", "upg", "npg", "one_step", "unrolled"])
@pytest.mark.parametrize("norm", ["weight", "spectral"])
def test_normalised_cell_trains_through_deq(norm, estimator):
    torch.manual_seed(0)
    cell = NormCell(6, scale=3.0)
    encoder = nn.Linear(3, 6)
    (apply_weight_norm if norm == "weight" else apply_spectral_norm)(cell)
    originals = {"weight": ["original0", "original1"], "spectral": ["original"]}[norm]
    kwargs = {"upg": {"steps": 3}, "npg": {"steps": 3}, "unrolled": {"steps": 3}}.get(estimator, {})
    stats = _train(cell, encoder, estimator, 3, **kwargs)
    for fn_calls, weight_computations, grads, _ in stats:
        assert fn_calls >= 4
        # The normalised weight is computed once per solve / attachment, not at every call of f.
        assert 1 <= weight_computations <= 3
        for name in originals:
            grad = grads[f"lin.parametrizations.weight.{name}"]
            assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0, name
        assert float(grads["lin.bias"].abs().max()) > 0


def test_norm_cache_computes_weight_once_per_forward_phase():
    torch.manual_seed(0)
    cell = NormCell(6, scale=3.0)
    apply_weight_norm(cell)
    stats = _train(cell, nn.Linear(3, 6), "implicit", 2)
    for fn_calls, weight_computations, _, _ in stats:
        assert fn_calls >= 6
        assert weight_computations == 2  # one for the solve, one for the recorded call F(z*)


def test_spectral_norm_keeps_unit_spectral_norm():
    torch.manual_seed(0)
    cell = NormCell(6, scale=3.0)
    encoder = nn.Linear(3, 6)
    apply_spectral_norm(cell)
    original = cell.lin.parametrizations.weight.original
    assert float(torch.linalg.matrix_norm(original.detach(), ord=2)) == pytest.approx(3.0, rel=1e-4)
    stats = _train(cell, encoder, "upg", 8)
    assert stats[-1][3] < stats[0][3]  # it learns
    cell.eval()
    sigma = float(torch.linalg.matrix_norm(cell.lin.weight.detach(), ord=2))
    assert sigma == pytest.approx(1.0, abs=0.03)
    assert float(torch.linalg.matrix_norm(original.detach(), ord=2)) > 2.0


def test_weight_norm_reparametrises_and_remove_norm_bakes_it():
    torch.manual_seed(0)
    cell = NormCell(4, scale=0.5)
    before = cell.lin.weight.detach().clone()
    apply_weight_norm(cell)
    apply_weight_norm(cell)  # idempotent
    g = cell.lin.parametrizations.weight.original0
    v = cell.lin.parametrizations.weight.original1
    torch.testing.assert_close(cell.lin.weight, before)
    with torch.no_grad():
        g.mul_(2.0)
    expected = g.detach() * v.detach() / v.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(cell.lin.weight, expected)
    remove_norm(cell)
    assert sorted(n for n, _ in cell.lin.named_parameters()) == ["bias", "weight"]
    torch.testing.assert_close(cell.lin.weight.detach(), 2.0 * before)


# ----------------------------------------------------------------------------------------------- dropout


def _distinct(masks: list[torch.Tensor]) -> int:
    unique: list[torch.Tensor] = []
    for m in masks:
        if not any(torch.equal(m, u) for u in unique):
            unique.append(m)
    return len(unique)


@pytest.mark.parametrize("estimator", ["implicit", "upg", "unrolled"])
def test_variational_dropout_one_mask_per_forward(estimator):
    torch.manual_seed(0)
    dim = 16
    drop = VariationalDropout(p=0.5)
    w = nn.Parameter(0.4 * torch.eye(dim))
    x = torch.randn(3, dim)
    recorded: list[torch.Tensor] = []

    def fn(z):
        mask = drop(torch.ones(3, dim))
        recorded.append(mask.detach().clone())
        return torch.tanh(z @ w.T) * mask + x

    kwargs = {"upg": {"steps": 3}, "unrolled": {"steps": 3}}.get(estimator, {})
    deq = DEQFixedPoint(
        "anderson", get_grad_estimator(estimator, **kwargs), max_iter=30, tol=1e-6, jacobian_reg_weight=1.0
    )
    deq.train()
    drop.train()
    z, result = deq(fn, torch.zeros(3, dim))
    first = list(recorded)
    assert len(first) >= 3
    assert _distinct(first) == 1
    assert set(first[0].unique().tolist()) == {0.0, 2.0}  # p=0.5: dropped or scaled by 1/(1-p)
    (z.sum() + result.jacobian_loss).backward()
    recorded.clear()
    deq(fn, torch.zeros(3, dim))
    second = list(recorded)
    assert _distinct(second) == 1
    assert not torch.equal(second[0], first[0])
    # Eval: identity.
    recorded.clear()
    deq.eval()
    drop.eval()
    with torch.no_grad():
        deq(fn, torch.zeros(3, dim))
    assert recorded and all(torch.equal(m, torch.ones(3, dim)) for m in recorded)


def test_variational_dropout_reuses_mask_until_new_masks():
    torch.manual_seed(0)
    drop = VariationalDropout(p=0.3, broadcast_dims=(1,))
    x = torch.ones(4, 5, 8)
    a = drop(x)
    b = drop(2 * x)
    torch.testing.assert_close(b, 2 * a)
    # The mask is shared along the broadcast dimension.
    assert bool((a == a[:, :1, :]).all())
    with new_dropout_masks():  # a new call: one new mask, reused inside it
        c = drop(x)
        torch.testing.assert_close(drop(3 * x), 3 * c)
    assert not torch.equal(a, c)
    torch.testing.assert_close(drop(x), c)  # outside any call: the last mask
    drop.reset_mask()
    assert not torch.equal(drop(x), c)
    drop.eval()
    y = torch.randn(4, 5, 8)
    assert torch.equal(drop(y), y)
    assert torch.equal(VariationalDropout(p=0.0)(y), y)


def test_nested_solve_keeps_the_outer_solves_dropout_mask():
    """Masks are keyed per call, not by a process-wide counter: a DEQ solved inside another DEQ's ``f`` (or any
    other layer's forward in between) does not make the outer layer's dropout draw a new mask mid-solve."""
    torch.manual_seed(0)
    dim = 8
    outer_drop, inner_drop = VariationalDropout(p=0.5), VariationalDropout(p=0.5)
    inner = DEQFixedPoint("fixed_point", "implicit", max_iter=3, tol=1e-9, on_failure="ignore").train()
    x = torch.randn(2, dim)
    outer_masks: list[torch.Tensor] = []

    def inner_fn(z):
        return 0.3 * torch.tanh(z) * inner_drop(torch.ones(2, dim)) + x

    def outer_fn(z):
        mask = outer_drop(torch.ones(2, dim))
        outer_masks.append(mask.detach().clone())
        with torch.no_grad():
            y, _ = inner(inner_fn, torch.zeros(2, dim))
        return 0.3 * torch.tanh(z) * mask + y

    outer = DEQFixedPoint("fixed_point", "implicit", max_iter=5, tol=1e-9, on_failure="ignore").train()
    with torch.no_grad():
        outer(outer_fn, torch.zeros(2, dim))
    assert len(outer_masks) >= 3
    assert _distinct(outer_masks) == 1


@pytest.mark.parametrize("p", [1, 1.0, -0.1, 2.0])
def test_variational_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="VariationalDropout.p"):
        VariationalDropout(p=p)
