"""``hf_deq.diagnostics``: gradient alignment against closed forms, and on both model families."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import hf_deq
from hf_deq.deq import DEQFixedPoint, get_grad_estimator
from hf_deq.deq.contractivity import spectral_radius
from hf_deq.diagnostics import contractivity, gradient_alignment


@dataclasses.dataclass
class _Output:
    loss: torch.Tensor


class LinearDEQ(nn.Module):
    """``z* = A z* + b`` with a fixed ``A`` (spectral radius ``rho``) and the trainable injection ``b``;
    loss ``c . z*`` summed over the batch. Exact gradient: ``db = (I - A)^{-T} c``; UPG(k, lambda) and
    NPG(k, lambda) both give ``lambda sum_{t<k} (B^T)^t c`` with ``B = lambda A + (1 - lambda) I``."""

    def __init__(self, dim: int, estimator: str, steps: int, damping: float, rho: float = 0.8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.register_buffer("a", a * (rho / torch.linalg.eigvals(a).abs().max()))
        self.b = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.register_buffer("c", torch.randn(dim, generator=g, dtype=torch.float64))
        estimator_obj = get_grad_estimator(estimator, steps=steps, damping=damping)
        self.deq = DEQFixedPoint("anderson", estimator_obj, max_iter=200, tol=1e-13)

    def forward(self, batch_size: int) -> _Output:
        z0 = torch.zeros(batch_size, self.b.numel(), dtype=torch.float64)
        z, _ = self.deq(lambda z: z @ self.a.T + self.b, z0)
        return _Output(loss=(z @ self.c).sum())


@pytest.mark.parametrize("estimator", ["upg", "npg"])
@pytest.mark.parametrize(("steps", "damping"), [(1, 1.0), (3, 0.5), (8, 0.8)])
def test_alignment_matches_the_closed_form_of_a_linear_deq(estimator, steps, damping):
    model = LinearDEQ(6, estimator, steps, damping)
    result = gradient_alignment(model, {"batch_size": 2}, reference_tol=1e-12, reference_max_iter=100)
    eye = torch.eye(6, dtype=torch.float64)
    exact = torch.linalg.solve((eye - model.a).T, model.c)
    b_mat = damping * model.a + (1 - damping) * eye
    phantom = damping * sum(torch.linalg.matrix_power(b_mat.T, t) @ model.c for t in range(steps))
    cosine = torch.dot(phantom, exact) / (phantom.norm() * exact.norm())
    error = (phantom - exact).norm() / exact.norm()
    assert result.cosine == pytest.approx(float(cosine), abs=1e-8)
    assert result.relative_error == pytest.approx(float(error), abs=1e-8)
    assert result.per_group["b"].cosine == pytest.approx(float(cosine), abs=1e-8)
    assert result.reference_residual < 1e-10


def test_implicit_estimator_is_aligned_with_itself():
    model = LinearDEQ(5, "upg", 2, 0.5)
    model.deq.grad_estimator = get_grad_estimator("implicit", max_iter=60, tol=1e-12)
    result = gradient_alignment(model, {"batch_size": 3}, reference_tol=1e-12)
    assert result.cosine == pytest.approx(1.0, abs=1e-9)
    assert result.relative_error < 1e-8


def test_spectral_radius_of_a_linear_map():
    model = LinearDEQ(6, "upg", 2, 0.5, rho=0.7)
    z = torch.randn(4, 6, dtype=torch.float64)
    rho = spectral_radius(lambda v: v @ model.a.T + model.b, z, iters=300)
    assert torch.allclose(rho, torch.full((4,), 0.7, dtype=torch.float64), atol=5e-3)


@pytest.mark.parametrize("preset", ["test_mdeq_tiny", "test_deq_transformer_tiny"])
def test_alignment_leaves_the_model_as_it_was(preset):
    torch.manual_seed(0)
    model = hf_deq.create_model(preset, grad_estimator="upg", grad_steps=2, grad_damping=0.5).double().train()
    config = model.config.to_dict()
    if "mdeq" in preset:
        batch = {
            "pixel_values": torch.randn(2, model.config.num_channels, 8, 8, dtype=torch.float64),
            "labels": torch.tensor([0, 1]),
        }
    else:
        ids = torch.randint(0, model.config.vocab_size, (2, 6))
        batch = {"input_ids": ids, "labels": ids}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = gradient_alignment(model, batch, reference_tol=1e-10, reference_max_iter=60)
    assert -1.0 <= result.cosine <= 1.0 and result.relative_error >= 0
    assert 0.0 < result.cosine  # UPG(2, 0.5) is a descent direction on a freshly initialised model
    assert set(result.per_group)  # one entry per group, every parameter in one
    assert sum(a.numel for a in result.per_group.values()) == result.overall.numel
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    # transformers' classification loss sets problem_type at the first forward with labels, whoever runs it
    assert {k: v for k, v in model.config.to_dict().items() if k != "problem_type"} == {
        k: v for k, v in config.items() if k != "problem_type"
    }
    radii = contractivity(model, batch, iters=6)
    assert len(radii) == len(model.deq_layers()) and all(r.shape == (2,) for r in radii)
    assert all(bool(torch.isfinite(r).all()) for r in radii)
    assert model.training
