"""``hf_deq.diagnostics.alignment_sweep``: every (estimator, k, lambda) point against the closed form of a linear
DEQ, and the model (estimators, config, weights, RNG) left as it was."""

from __future__ import annotations

import torch
from test_gradient_alignment import LinearDEQ

import hf_deq
from hf_deq.diagnostics import alignment_sweep, plot_alignment_sweep


def test_every_point_matches_the_closed_form_of_a_linear_deq():
    model = LinearDEQ(6, "upg", 2, 0.5)
    configured = model.deq.grad_estimator
    rng = torch.get_rng_state()
    points, residual = alignment_sweep(
        model, {"batch_size": 2}, steps=(1, 3, 8), dampings=(0.5, 1.0), reference_tol=1e-12
    )
    assert [(p.estimator, p.steps, p.damping) for p in points] == [
        (e, k, lam) for e in ("upg", "npg") for k in (1, 3, 8) for lam in (0.5, 1.0)
    ]
    eye = torch.eye(6, dtype=torch.float64)
    exact = torch.linalg.solve((eye - model.a).T, model.c)
    for p in points:
        b_mat = p.damping * model.a + (1 - p.damping) * eye
        phantom = p.damping * sum(torch.linalg.matrix_power(b_mat.T, t) @ model.c for t in range(p.steps))
        cosine = float(torch.dot(phantom, exact) / (phantom.norm() * exact.norm()))
        error = float((phantom - exact).norm() / exact.norm())
        assert abs(p.cosine - cosine) < 1e-8 and abs(p.relative_error - error) < 1e-8, p
    assert residual < 1e-10
    assert model.deq.grad_estimator is configured and torch.equal(torch.get_rng_state(), rng)
    assert all(param.grad is None for param in model.parameters())


def test_on_a_tiny_model_the_config_and_estimators_are_untouched(tmp_path):
    torch.manual_seed(0)
    model = hf_deq.create_model("test_deq_transformer_tiny", grad_estimator="upg", grad_steps=2).train()
    config = model.config.to_dict()
    estimators = [layer.grad_estimator for layer in model.deq_layers()]
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    points, _ = alignment_sweep(model, {"input_ids": ids, "labels": ids}, steps=(1, 4), dampings=(0.8,))
    assert len(points) == 4 and all(-1 <= p.cosine <= 1 for p in points)
    by_k = {(p.estimator, p.steps): p.cosine for p in points}
    assert by_k[("upg", 4)] > by_k[("upg", 1)]  # more phantom steps get closer to the exact gradient
    assert model.config.to_dict() == config
    assert [layer.grad_estimator for layer in model.deq_layers()] == estimators
    plot_alignment_sweep(points, str(tmp_path / "sweep.png"), "tiny")
    assert (tmp_path / "sweep.png").stat().st_size > 1000
