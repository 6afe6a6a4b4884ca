"""Limited-memory ("good") Broyden's method on ``g(z) = f(z) - z``."""

from __future__ import annotations

import torch
from torch import Tensor

from .anderson import _check_float, _check_int
from .base import BestIterateTracker, FixedPointFn, Solver, evaluate, no_autocast, restart_nonfinite


class Broyden(Solver):
    """Broyden's quasi-Newton method for ``g(z) = f(z) - z = 0`` (DEQ paper, Bai et al. 2019, sec. 3.1.1).

    The inverse Jacobian of ``g`` is kept as ``B = -I + sum_i u_i v_i^T`` over at most ``memory`` rank-one
    updates in a ring buffer (the oldest is dropped when it is full), so the state is
    ``2 x batch x memory x dim`` whatever ``max_iter`` is. Each step costs one ``B y`` and one ``x^T B``
    product (``O(memory * D)``): ``B`` applied to the previous residual is reused from the previous step.

    Args:
        memory: number of rank-one updates kept.
        step_size: scale of the quasi-Newton step ``-step_size * B g``.
    """

    def __init__(self, memory: int = 20, step_size: float = 1.0) -> None:
        self.memory = _check_int("Broyden.memory", memory, 1)
        self.step_size = _check_float("Broyden.step_size", step_size, 0.0, 1.0, low_open=True)

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        batch, dim = z0.shape
        work = torch.promote_types(z0.dtype, torch.float32)
        us = torch.zeros(batch, self.memory, dim, dtype=work, device=z0.device)
        vs = torch.zeros_like(us)
        x = z0.to(work)
        fx, done = evaluate(fn, x.to(z0.dtype), tracker)
        g = fx.to(work) - x
        b_g = -g  # B g with B = -I
        n_updates = 0
        for _ in range(max_iter - 1):
            if bool(done.all()):
                return
            with no_autocast(x.device):
                dx = -self.step_size * b_g
                x_new = restart_nonfinite(x + dx, tracker)
                dx = x_new - x
            fx, done = evaluate(fn, x_new.to(z0.dtype), tracker)
            with no_autocast(x.device):
                g_new = fx.to(work) - x_new
                n = min(n_updates, self.memory)
                b_g_new = self._apply(us[:, :n], vs[:, :n], g_new)  # B_old g_new
                v = self._apply_transposed(us[:, :n], vs[:, :n], dx)  # dx^T B_old
                b_dg = b_g_new - b_g  # B_old (g_new - g)
                denom = (v * (g_new - g)).sum(dim=1, keepdim=True)
                safe = denom.abs() > 1e-20
                u = torch.where(safe, (dx - b_dg) / torch.where(safe, denom, torch.ones_like(denom)), 0.0)
                u = torch.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0)
                # B_new = B_old + u v^T, minus the oldest term once the ring buffer is full.
                b_g = b_g_new + u * (v * g_new).sum(dim=1, keepdim=True)
                slot = n_updates % self.memory
                if n_updates >= self.memory:
                    b_g = b_g - us[:, slot] * (vs[:, slot] * g_new).sum(dim=1, keepdim=True)
                us[:, slot] = u
                vs[:, slot] = v
                n_updates += 1
                x, g = x_new, g_new

    @staticmethod
    def _apply(us: Tensor, vs: Tensor, y: Tensor) -> Tensor:
        """``B y = -y + sum_i u_i (v_i . y)``."""
        if us.shape[1] == 0:
            return -y
        coeff = torch.bmm(vs, y.unsqueeze(2))  # (B, n, 1)
        return -y + torch.bmm(us.transpose(1, 2), coeff).squeeze(2)

    @staticmethod
    def _apply_transposed(us: Tensor, vs: Tensor, y: Tensor) -> Tensor:
        """``y^T B = -y + sum_i v_i (u_i . y)``."""
        if us.shape[1] == 0:
            return -y
        coeff = torch.bmm(us, y.unsqueeze(2))
        return -y + torch.bmm(vs.transpose(1, 2), coeff).squeeze(2)
