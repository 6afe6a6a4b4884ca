"""Anderson acceleration (Anderson 1965; Walker & Ni 2011), batched with per-sample coefficients."""

from __future__ import annotations

import torch
from torch import Tensor

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
    small_solve_threads,
)


def _check_float(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class Anderson(Solver):
    """Anderson acceleration of ``z = f(z)``.

    With the last ``n <= memory`` iterates ``x_i`` and residuals ``g_i = f(x_i) - x_i``, each sample solves
    ``min_a ||sum_i a_i g_i||^2 + reg ||a||^2`` subject to ``sum_i a_i = 1`` and steps to
    ``x+ = mixing * sum_i a_i f(x_i) + (1 - mixing) * sum_i a_i x_i``.

    The Gram matrix ``G G^T`` is kept up to date one row per step (``O(memory * D)`` work per evaluation rather
    than ``O(memory^2 * D)``), and the small bordered system is solved in float32 or wider, so the solver works
    under bf16/fp16 autocast. A singular system never raises: the regularization is scaled to the residuals and
    samples whose system still fails fall back to a plain fixed-point step.

    Args:
        memory: number of past iterates kept (``m``).
        regularization: Tikhonov weight on the diagonally scaled (unit-diagonal) system.
        mixing: ``beta`` in ``(0, 1]``.
        check_every: the host reads the stop test every this many evaluations; ``None`` (or 0): only at the
            end of ``max_iter`` (see ``hf_deq.deq.solvers.base``).
    """

    def __init__(
        self,
        memory: int = 5,
        regularization: float = 1e-4,
        mixing: float = 1.0,
        check_every: int | None = 1,
    ) -> None:
        self.memory = _check_int("Anderson.memory", memory, 1)
        self.regularization = _check_float("Anderson.regularization", regularization, 0.0, float("inf"))
        self.mixing = _check_float("Anderson.mixing", mixing, 0.0, 1.0, low_open=True)
        self.check_every = check_check_every("Anderson", check_every)

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        batch, dim = z0.shape
        work = torch.promote_types(z0.dtype, torch.float32)
        # Ring buffers of f(x_i) and g_i = f(x_i) - x_i (x_i = f_i - g_i need not be stored). Slots are
        # written before they are read, so they need no initialisation.
        fs = torch.empty(batch, self.memory, dim, dtype=work, device=z0.device)
        gs = torch.empty_like(fs)
        gram = torch.zeros(batch, self.memory, self.memory, dtype=work, device=z0.device)
        x = z0.to(work)
        for k in range(max_iter):
            z = x.to(z0.dtype)
            fx = call_fn(fn, z, tracker)
            slot = k % self.memory
            with no_autocast(x.device):
                f_slot, g_slot = fs[:, slot], gs[:, slot]
                f_slot.copy_(fx)
                torch.sub(f_slot, x, out=g_slot)
                if z is x and torch.promote_types(fx.dtype, torch.float32) == work:
                    # g_slot is exactly the residual f(z) - z in the residual dtype: reuse it.
                    abs_res, rel_res = difference_norms(g_slot, f_slot)
                else:
                    abs_res, rel_res = residual_norms(fx, z)
            # Iterates after the first are this solver's own tensors and never modified in place.
            done = tracker.update(z, abs_res, rel_res, owned=k > 0)
            if k == max_iter - 1 or tracker.should_stop(done):
                return
            with no_autocast(x.device):
                x = restart_nonfinite(self._step(x, k, fs, gs, gram), tracker)

    def _step(self, x: Tensor, k: int, fs: Tensor, gs: Tensor, gram: Tensor) -> Tensor:
        """With ``f(x)`` and ``g = f(x) - x`` stored in slot ``k % memory``: update the Gram row, mix."""
        slot = k % self.memory
        n = min(k + 1, self.memory)
        # g_slot^T G^T as a (1, n) row: on CPU this layout of the product is ~2x faster than G g_slot.
        row = torch.bmm(gs[:, slot].unsqueeze(1), gs[:, :n].transpose(1, 2)).squeeze(1)
        gram[:, slot, :n] = row
        gram[:, :n, slot] = row
        alpha = self._coefficients(gram[:, :n, :n], slot).unsqueeze(1)
        x_next = torch.bmm(alpha, fs[:, :n]).squeeze(1)
        if self.mixing != 1.0:
            x_next = x_next - (1.0 - self.mixing) * torch.bmm(alpha, gs[:, :n]).squeeze(1)
        return x_next

    def _coefficients(self, gram: Tensor, latest: int) -> Tensor:
        """Per sample, minimise ``a^T H a`` with ``sum(a) = 1`` (float32 or wider, never raises).

        ``H`` is scaled to unit diagonal first (``S H S`` with ``S = diag(H)^{-1/2}``), so residuals of very
        different sizes do not make the system ill-conditioned, then regularised by ``regularization * I``.
        The bordered system ``[[0, s^T], [s, S H S + reg I]] [mu, b] = [1, 0]`` gives ``a = S b``.
        """
        batch, n, _ = gram.shape
        h = gram.to(torch.promote_types(gram.dtype, torch.float32))
        s = torch.diagonal(h, dim1=1, dim2=2).clamp_min(1e-30).rsqrt()
        eye = torch.eye(n, dtype=h.dtype, device=h.device)
        system = torch.zeros(batch, n + 1, n + 1, dtype=h.dtype, device=h.device)
        system[:, 0, 1:] = s
        system[:, 1:, 0] = s
        system[:, 1:, 1:] = s.unsqueeze(2) * h * s.unsqueeze(1) + (self.regularization + 1e-10) * eye
        rhs = torch.zeros(batch, n + 1, dtype=h.dtype, device=h.device)
        rhs[:, 0] = 1.0
        with small_solve_threads(system.device):
            solution, info = torch.linalg.solve_ex(system, rhs)
        alpha = solution[:, 1:] * s
        ok = (info == 0) & torch.isfinite(alpha).all(dim=1)
        fallback = torch.zeros_like(alpha)
        fallback[:, latest] = 1.0
        return torch.where(ok.unsqueeze(1), alpha, fallback).to(gram.dtype)
