"""Limited-memory ("good") Broyden's method on ``g(z) = f(z) - z``."""

from __future__ import annotations

import torch
from torch import Tensor

from .anderson import _check_float, _check_int
from .base import (
    BestIterateTracker,
    FixedPointFn,
    Solver,
    call_fn,
    check_check_every,
    difference_norms,
    no_autocast,
    residual_norms,
    restart_nonfinite,
)


class Broyden(Solver):
    """Broyden's quasi-Newton method for ``g(z) = f(z) - z = 0`` (DEQ paper, Bai et al. 2019, sec. 3.1.1).

    The inverse Jacobian of ``g`` is kept as ``B = -I + sum_i u_i v_i^T`` over at most ``memory`` rank-one
    updates in a ring buffer (the oldest is dropped when it is full), so the state is
    ``2 x batch x memory x dim`` whatever ``max_iter`` is. Each step costs one ``B y`` and one ``x^T B``
    product (``O(memory * D)``): ``B`` applied to the previous residual is reused from the previous step.

    Args:
        memory: number of rank-one updates kept.
        step_size: scale of the quasi-Newton step ``-step_size * B g``.
        check_every: the host reads the stop test every this many evaluations; ``None`` (or 0): only at the
            end of ``max_iter`` (see ``hf_deq.deq.solvers.base``).
    """

    def __init__(self, memory: int = 20, step_size: float = 1.0, check_every: int | None = 1) -> None:
        self.memory = _check_int("Broyden.memory", memory, 1)
        self.step_size = _check_float("Broyden.step_size", step_size, 0.0, 1.0, low_open=True)
        self.check_every = check_check_every("Broyden", check_every)

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        batch, dim = z0.shape
        work = torch.promote_types(z0.dtype, torch.float32)
        # Only the first min(n_updates, memory) slots are ever read, and each is written first.
        us = torch.empty(batch, self.memory, dim, dtype=work, device=z0.device)
        vs = torch.empty_like(us)
        x = z0.to(work)
        g, done = self._evaluate(fn, x, z0.dtype, tracker, owned=False)
        b_g = -g  # B g with B = -I
        n_updates = 0
        for _ in range(max_iter - 1):
            if tracker.should_stop(done):
                return
            with no_autocast(x.device):
                # x - b_g is exactly x + (-1 * b_g), the step with step_size 1.
                x_new = x - b_g if self.step_size == 1.0 else x + (-self.step_size * b_g)
                x_new = restart_nonfinite(x_new, tracker)
                dx = x_new - x
            # x_new is this solver's own tensor and never modified in place.
            g_new, done = self._evaluate(fn, x_new, z0.dtype, tracker, owned=True)
            with no_autocast(x.device):
                n = min(n_updates, self.memory)
                b_g_new = self._apply(us[:, :n], vs[:, :n], g_new)  # B_old g_new
                v = self._apply_transposed(us[:, :n], vs[:, :n], dx)  # dx^T B_old
                denom = _dot(v, g_new - g)
                safe = denom.abs() > 1e-20
                # u = (dx - B_old (g_new - g)) / denom, zero where the update is unsafe or not finite.
                # Dividing by +inf zeroes the unsafe rows (finite / inf = 0; the non-finite become NaN -> 0).
                u = dx - (b_g_new - b_g)
                u.div_(torch.where(safe, denom, torch.full_like(denom, float("inf"))))
                torch.nan_to_num_(u, nan=0.0, posinf=0.0, neginf=0.0)
                # B_new = B_old + u v^T, minus the oldest term once the ring buffer is full.
                b_g = b_g_new.add_(u * _dot(v, g_new))
                slot = n_updates % self.memory
                if n_updates >= self.memory:
                    b_g.sub_(us[:, slot] * _dot(vs[:, slot], g_new))
                us[:, slot].copy_(u)
                vs[:, slot].copy_(v)
                n_updates += 1
                x, g = x_new, g_new

    @staticmethod
    def _evaluate(
        fn: FixedPointFn, x: Tensor, state_dtype: torch.dtype, tracker: BestIterateTracker, owned: bool
    ) -> tuple[Tensor, Tensor]:
        """Evaluate at ``x`` (cast to the state dtype), record the residual; return ``(g(x), done_mask)``
        with ``g(x) = f(x) - x`` in the working dtype of ``x``."""
        z = x.to(state_dtype)
        fx = call_fn(fn, z, tracker)
        with no_autocast(x.device):
            f_work = fx.to(x.dtype)
            g = f_work - x
            if z is x and torch.promote_types(fx.dtype, torch.float32) == x.dtype:
                abs_res, rel_res = difference_norms(g, f_work)  # g is exactly the residual f(z) - z
            else:
                abs_res, rel_res = residual_norms(fx, z)
        return g, tracker.update(z, abs_res, rel_res, owned=owned)

    @staticmethod
    def _apply(us: Tensor, vs: Tensor, y: Tensor) -> Tensor:
        """``B y = -y + sum_i u_i (v_i . y)``."""
        if us.shape[1] == 0:
            return -y
        # Products in (1, n) x (n, D) row form, ~2x faster on CPU than the (D, n) x (n, 1) column form.
        coeff = torch.bmm(y.unsqueeze(1), vs.transpose(1, 2))  # (B, 1, n)
        return torch.bmm(coeff, us).squeeze(1).sub_(y)

    @staticmethod
    def _apply_transposed(us: Tensor, vs: Tensor, y: Tensor) -> Tensor:
        """``y^T B = -y + sum_i v_i (u_i . y)``."""
        if us.shape[1] == 0:
            return -y
        coeff = torch.bmm(y.unsqueeze(1), us.transpose(1, 2))
        return torch.bmm(coeff, vs).squeeze(1).sub_(y)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample dot product ``(B, D) x (B, D) -> (B, 1)``."""
    return (a * b).sum(dim=1, keepdim=True)
