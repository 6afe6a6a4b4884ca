"""Jacobian regularisation (Bai, Koltun, Kolter, "Stabilizing Equilibrium Models by Jacobian
Regularization", ICML 2021)."""

from __future__ import annotations

import torch
from torch import Tensor


def jacobian_frobenius_loss(f_out: Tensor, z_in: Tensor, num_samples: int = 1) -> Tensor:
    """Hutchinson estimate of ``||dF/dz||_F^2 / D`` per sample, averaged over the batch (eq. 6 there).

    ``||J||_F^2 = E_eps ||eps^T J||^2`` with ``eps ~ N(0, I)``. ``f_out = F(z_in)`` must have been computed
    with ``z_in.requires_grad``; the result is differentiable (``create_graph=True``). ``num_samples`` Gaussian
    probes ``eps`` are averaged.
    """
    if not z_in.requires_grad:
        raise ValueError("jacobian_frobenius_loss needs z_in.requires_grad=True and f_out computed from it")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    batch = z_in.shape[0]
    dim = z_in[0].numel()
    total = z_in.new_zeros(())
    for _ in range(num_samples):
        eps = torch.randn_like(f_out)
        (vjp,) = torch.autograd.grad(f_out, z_in, eps, create_graph=True, retain_graph=True)
        total = total + vjp.to(torch.promote_types(vjp.dtype, torch.float32)).pow(2).sum() / (batch * dim)
    return total / num_samples
