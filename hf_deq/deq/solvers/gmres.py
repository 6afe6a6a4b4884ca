"""Restarted GMRES for affine fixed-point problems ``u = A u + b`` (the implicit-differentiation backward)."""

from __future__ import annotations

import torch
from torch import Tensor

from .anderson import _check_int
from .base import (
    BestIterateTracker,
    FixedPointFn,
    Solver,
    evaluate,
    host_sync_is_free,
    no_autocast,
    small_solve_threads,
)

_REORTHOGONALIZE = 2**-0.5


class GMRES(Solver):
    """GMRES (Saad & Schultz 1986) on ``(I - A) u = b`` for an affine map ``f(u) = A u + b``, per sample.

    The backward problem of implicit differentiation, ``u = J^T u + g`` (docs/design.md, "Gradient
    estimators"), is linear, so a Krylov method needs far fewer vector-Jacobian products than a fixed-point
    solver. ``b`` is recovered as ``f(0)`` and ``(I - A) v`` as ``v - (f(v) - b)``, so the solver only ever
    calls ``f``. Each sample has its own Krylov basis (classical Gram-Schmidt with DGKS reorthogonalisation);
    the small Hessenberg least-squares problems are solved on the CPU in float64. Memory is bounded by
    ``restart``, not by ``max_iter``.

    Only correct for affine maps: it is refused as a forward solver.

    Args:
        restart: Krylov dimension before a restart.
    """

    label = "GMRES"
    description = (
        "GMRES (Saad & Schultz 1986), for affine maps only: the linear backward problem u = J^T u + g of "
        "implicit differentiation"
    )

    affine_only = True

    def __init__(self, restart: int = 20) -> None:
        self.restart = _check_int("GMRES.restart", restart, 1)

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        """``max_iter`` bounds the products with ``A`` (Krylov steps); every (re)start evaluates the true
        residual once more, so a solve costs at most ``max_iter + restarts + 2`` calls of ``fn``."""
        work = torch.promote_types(z0.dtype, torch.float32)
        u = z0.to(work)
        start_at_zero = not bool(z0.any())
        b = None
        remaining = max_iter
        first = True
        while True:
            # True residual r = f(u) - u. Restarted iterates are this solver's own tensors (never modified).
            fu, done = evaluate(fn, u.to(z0.dtype), tracker, owned=not first)
            first = False
            if b is None:
                if start_at_zero:
                    b = fu.to(work)
                else:
                    b = fn(torch.zeros_like(z0)).to(work)
                    tracker.nfev += 1
            if bool(done.all()) or remaining <= 0:
                return
            with no_autocast(u.device):
                u, used = self._cycle(
                    fn, u, fu.to(work) - u, b, min(self.restart, remaining), tracker, z0.dtype
                )
            remaining -= used

    def _cycle(self, fn, u, r, b, steps, tracker, state_dtype):
        """One GMRES cycle of at most ``steps`` matrix-vector products from ``u`` with residual ``r``."""
        batch, dim = u.shape
        beta = torch.linalg.vector_norm(r, dim=1)
        # Row j + 1 is written at step j before it is read: no initialisation needed.
        basis = torch.empty(batch, steps + 1, dim, dtype=u.dtype, device=u.device)
        torch.div(r, beta.clamp_min(1e-30).unsqueeze(1), out=basis[:, 0])
        hess = torch.zeros(batch, steps + 1, steps, dtype=torch.float64)
        rhs = torch.zeros(batch, steps + 1, dtype=torch.float64)
        rhs[:, 0] = beta.double().cpu()
        scale = torch.linalg.vector_norm(b, dim=1).double().cpu().clamp_min(1e-30)
        tol = tracker.tol
        y = torch.zeros(batch, 0, dtype=torch.float64)
        used = 0
        for j in range(steps):
            v = basis[:, j]
            # (I - A) v = v - (f(v) - b), computed as (b - f(v)) + v: the same floating-point result.
            w = torch.sub(b, fn(v.to(state_dtype)).to(u.dtype)).add_(v)
            tracker.nfev += 1
            used += 1
            # Classical Gram-Schmidt with reorthogonalisation; w <- w - (w^T V^T) V in one fused product per
            # pass, in the (1, j) x (j, D) row layout, which is ~2x faster on CPU than the column one.
            known = basis[:, : j + 1]
            h = torch.bmm(w.unsqueeze(1), known.transpose(1, 2))
            w_norm = torch.linalg.vector_norm(w, dim=1) if host_sync_is_free(w) else None
            w = torch.baddbmm(w.unsqueeze(1), h, known, alpha=-1.0)
            h_next = torch.linalg.vector_norm(w.squeeze(1), dim=1)
            # "Twice is enough" (Daniel, Gragg, Kaufman & Stewart 1976): the second pass only matters where the
            # first cancelled most of w. On CPU it is skipped when no sample lost more than 1 - 1/sqrt(2) of
            # its norm (the second pass would change w at rounding level only); elsewhere it always runs.
            if w_norm is None or bool((h_next < _REORTHOGONALIZE * w_norm).any()):
                h2 = torch.bmm(w, known.transpose(1, 2))
                w = torch.baddbmm(w, h2, known, alpha=-1.0)
                h = h + h2
                h_next = torch.linalg.vector_norm(w.squeeze(1), dim=1)
            w, h = w.squeeze(1), h.squeeze(1)
            torch.div(w, h_next.clamp_min(1e-30).unsqueeze(1), out=basis[:, j + 1])
            # One device-to-host transfer for the new Hessenberg column.
            hess[:, : j + 2, j] = torch.cat([h, h_next.unsqueeze(1)], dim=1).double().cpu()
            sub = hess[:, : j + 2, : j + 1]
            with small_solve_threads(sub.device):
                y = torch.linalg.lstsq(sub, rhs[:, : j + 2].unsqueeze(2), driver="gelsy").solution.squeeze(2)
            res = torch.linalg.vector_norm(rhs[:, : j + 2] - torch.bmm(sub, y.unsqueeze(2)).squeeze(2), dim=1)
            rel = res / scale
            if bool(((rel if tracker.stop_mode == "rel" else res) <= tol).all()):
                break
        coeff = y.to(device=u.device, dtype=u.dtype)
        u = u + torch.bmm(coeff.unsqueeze(1), basis[:, : coeff.shape[1]]).squeeze(1)
        return u, used
