"""Mixed precision. Training steps under ``torch.autocast("cpu", dtype=torch.bfloat16)`` give
finite losses and gradients for both models and every gradient estimator; the equilibrium state stays float32
(the solver's iterate, its residuals and the small Anderson/Broyden/GMRES systems are float32 or wider) while the
cell's matmuls and convolutions run in bf16. See docs/precision.md."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_runs import ESTIMATORS, tiny_inputs, tiny_model

from hf_deq.deq import DEQFixedPoint, get_solver

CASES = [(kind, estimator) for kind in ("mdeq", "lm", "lm_adaptive") for estimator in ESTIMATORS]


@pytest.mark.parametrize("kind, estimator", CASES, ids=[f"{k}-{e}" for k, e in CASES])
def test_bf16_autocast_training_steps_are_finite(kind, estimator):
    model = tiny_model(kind, grad_estimator=estimator, grad_steps=3, solver_max_iter=6, grad_max_iter=8)
    model.train()
    inputs = tiny_inputs(kind, model.config, batch=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seen_bf16 = []
    hook = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    handle = hook.register_forward_hook(lambda mod, inp, out: seen_bf16.append(out.dtype == torch.bfloat16))
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(**inputs)
        loss = outputs.loss
        assert loss.dtype == torch.float32  # the loss is computed from float32 logits / log-probabilities
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        missing = [n for n, g in grads.items() if g is None]
        assert not missing, f"no gradient under {estimator}: {missing[:5]}"
        bad = [n for n, g in grads.items() if not bool(torch.isfinite(g).all())]
        assert not bad, f"non-finite gradient under {estimator}: {bad[:5]}"
        assert all(g.dtype == torch.float32 for g in grads.values())  # master weights stay float32
        optimizer.step()
        losses.append(float(loss.detach()))
        # The equilibrium state the solver returns stays float32 under autocast.
        state = outputs.hidden_states[0] if kind == "mdeq" and outputs.hidden_states else None
        if state is not None:
            assert state.dtype == torch.float32
        assert outputs.solver_residual.dtype == torch.float32
        assert bool(torch.isfinite(outputs.solver_residual).all())
    handle.remove()
    assert all(math.isfinite(x) for x in losses), losses
    assert any(seen_bf16), "autocast did not run the cell's layers in bf16"


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_bf16_autocast_equilibrium_state_is_float32(kind):
    model = tiny_model(kind).eval()
    inputs = tiny_inputs(kind, model.config)
    base = model.mdeq if kind == "mdeq" else model.model
    inputs.pop("labels")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = base(**inputs)
    with torch.no_grad():
        reference = base(**inputs)
    assert out.last_hidden_state.dtype == torch.float32
    # bf16 has ~3 significant digits: the fixed point moves, but stays close.
    error = (out.last_hidden_state - reference.last_hidden_state).norm() / reference.last_hidden_state.norm()
    assert float(error) < 0.1, float(error)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point"])
def test_solvers_on_a_bf16_state_keep_float32_residuals(name):
    """A bf16 map on a bf16 state (a model cast with ``.to(torch.bfloat16)``): the iterate stays bf16, the
    residuals and the small least-squares systems are float32, nothing raises, the result is finite."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 16, generator=g)
    w = (0.5 * w / torch.linalg.matrix_norm(w, ord=2)).to(torch.bfloat16)
    x = torch.randn(4, 16, generator=g).to(torch.bfloat16)
    result = get_solver(name).solve(lambda z: torch.tanh(z @ w.T + x), torch.zeros(4, 16, dtype=torch.bfloat16),
                                    max_iter=30, tol=1e-2)  # fmt: skip
    assert result.z.dtype == torch.bfloat16 and bool(torch.isfinite(result.z).all())
    assert result.abs_residual.dtype == torch.float32 and result.rel_residual.dtype == torch.float32
    assert bool(result.converged.all()), result.rel_residual


def test_implicit_backward_under_autocast_matches_float32():
    """The implicit estimator's backward linear solve (GMRES, small Hessenberg system in float64) under bf16
    autocast gives a gradient close to the float32 one on a contractive layer."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 12)
    with torch.no_grad():
        lin.weight.mul_(0.4 / torch.linalg.matrix_norm(lin.weight, ord=2))
    x = torch.randn(5, 12, requires_grad=True)
    layer = DEQFixedPoint("anderson", "implicit", max_iter=40, tol=1e-6, on_failure="ignore").train()

    def grad_of_x(enabled: bool) -> torch.Tensor:
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            z, _ = layer(lambda z: torch.tanh(lin(z)) + x, torch.zeros(5, 12))
        z.float().pow(2).sum().backward()
        return x.grad.clone()

    reference, mixed = grad_of_x(False), grad_of_x(True)
    assert bool(torch.isfinite(mixed).all())
    assert float((mixed - reference).norm() / reference.norm()) < 0.05
