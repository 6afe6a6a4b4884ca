"""How contractive the cell is at its equilibrium: the spectral radius of ``J = df/dz`` at ``z*``.

A DEQ's forward solve converges (and the implicit backward ``u = J^T u + g`` is solvable by iteration) when
``rho(J) < 1`` at the fixed point (DEQ paper, Bai et al. 2019, sec. 3; phantom-gradient paper, arXiv 2111.05177,
sec. 3, where ``B = lambda J + (1 - lambda) I`` must be contractive for UPG/NPG to approximate the exact
gradient). ``spectral_radius`` estimates ``rho(J)`` per sample by power iteration with vector-Jacobian products
through one recorded call of ``f`` (``J^T`` has the eigenvalues of ``J``; reverse mode works for every cell, where
forward mode lacks rules for some kernels, e.g. CPU flash attention): the growth rate ``||(J^T)^t v|| ^ (1/t)``
of a random start, which converges to ``rho(J)`` also when the dominant eigenvalues are a complex pair (where
the plain Rayleigh quotient oscillates). The graph is freed when the estimate returns.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .solvers.base import FixedPointFn


def spectral_radius(
    fn: FixedPointFn, z: Tensor, *, iters: int = 20, generator: torch.Generator | None = None
) -> Tensor:
    """Per-sample estimate of the spectral radius of ``df/dz`` of the map ``fn`` at ``z`` (``(B, D)``), shape
    ``(B,)``; the start vector is drawn from ``generator`` (the global RNG when ``None``).

    ``iters`` vector-Jacobian products of the whole batch (each sample's block of ``J`` is its own when ``f``
    treats samples independently, as a DEQ cell in eval mode does). The estimate is the geometric mean of the
    per-step growth ``||J v_t|| / ||v_t||`` over the second half of the iterations, ``v_t`` renormalised at every
    step. A non-finite product gives ``inf``. Runs under ``no_grad`` and ``inference_mode`` callers too (autograd
    is switched on for the one call of ``f``).
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 2:
        raise ValueError(f"spectral_radius: iters must be an integer >= 2, got {iters!r}")
    z = z.detach()
    dtype = torch.promote_types(z.dtype, torch.float32)
    v = torch.randn(z.shape, generator=generator, device="cpu", dtype=dtype).to(z.device)
    v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (v.dim() - 1)))
    log_growth = torch.zeros(z.shape[0], dtype=dtype, device=z.device)
    counted = 0
    with torch.inference_mode(False), torch.enable_grad():  # also from no_grad / inference_mode callers
        z_in = z.clone().requires_grad_()
        fz = fn(z_in)
    for t in range(iters):
        (jv,) = torch.autograd.grad(fz, z_in, v.to(fz.dtype), retain_graph=t < iters - 1)
        with torch.no_grad():
            jv = jv.to(dtype)
            norm = jv.flatten(1).norm(dim=1)
            if t >= iters // 2:
                log_growth += torch.log(norm.clamp_min(1e-30))
                counted += 1
            v = jv / norm.clamp_min(1e-30).view(-1, *([1] * (jv.dim() - 1)))
    rho = torch.exp(log_growth / counted)
    return torch.nan_to_num(rho, nan=math.inf)


__all__ = ["spectral_radius"]
