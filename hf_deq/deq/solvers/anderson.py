"""Anderson acceleration (Anderson 1965; Walker & Ni 2011), batched with per-sample coefficients."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from .base import (
    BestIterateTracker,
    FixedPointFn,
    IterateBuffers,
    Solver,
    call_fn,
    check_check_every,
    residual_norms,
    restart_where,
    small_solve_threads,
    solver_precision,
    squared_norm_residuals,
)
from .stepped import State, check_step_shape, copied, filled, new_state, record

#: Upper bound of a solver's history (Anderson / Broyden ``memory``, GMRES ``restart``): each slot holds copies of
#: the whole state of every sample, allocated up front.
MAX_HISTORY = 1_000


def _check_float(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _check_int(name: str, value: object, low: int, high: int = MAX_HISTORY) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"{name} must be an integer in [{low}, {high}] (each slot holds copies of the whole state), "
            f"got {value!r}"
        )
    return value


class Anderson(Solver):
    """Anderson acceleration of ``z = f(z)`` (Anderson 1965; Walker & Ni 2011).

    With the last ``n <= memory`` iterates ``x_i`` and residuals ``g_i = f(x_i) - x_i``, each sample solves
    ``min_a ||sum_i a_i g_i||^2 + reg ||a||^2`` subject to ``sum_i a_i = 1`` and steps to
    ``x+ = mixing * sum_i a_i f(x_i) + (1 - mixing) * sum_i a_i x_i``.

    The Gram matrix ``G G^T`` is kept up to date one row per step (``O(memory * D)`` work per evaluation rather
    than ``O(memory^2 * D)``; the same product gives the residual norm), and the small bordered system is
    solved in float32 or wider, so the solver works under bf16/fp16 autocast. A singular system never raises: the regularization is scaled to the residuals and
    samples whose system still fails fall back to a plain fixed-point step.

    Args:
        memory: number of past iterates kept (``m``).
        regularization: Tikhonov weight on the diagonally scaled (unit-diagonal) system.
        mixing: ``beta`` in ``(0, 1]``.
        check_every: the host reads the stop test every this many evaluations; ``None`` (or 0): only at the
            end of ``max_iter`` (see ``hf_deq.deq.solvers.base``).
    """

    label = "Anderson"
    description = (
        "Anderson acceleration: each step mixes the last m iterates with the weights that minimise their "
        "combined residual (Anderson 1965; Walker & Ni 2011)"
    )

    has_step = True

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
        m = self.memory
        device = z0.device
        work = torch.promote_types(z0.dtype, torch.float32)
        # Ring buffers of f(x_i) and g_i = f(x_i) - x_i (x_i = f_i - g_i need not be stored). Slots are
        # written before they are read, so they need no initialisation.
        fs = self.workspace("fs", (batch, m, dim), work, device)
        gs = self.workspace("gs", (batch, m, dim), work, device)
        # The scaled, regularised bordered system of _coefficients, kept up to date one row and column per
        # step: with s_i = (g_i . g_i)^(-1/2) fixed once slot i is written, the entries s_i (g_i . g_j) s_j of
        # the older slots do not change.
        system = torch.zeros(batch, m + 1, m + 1, dtype=work, device=device)
        scale = torch.zeros(batch, m, dtype=work, device=device)
        rhs = torch.zeros(batch, m + 1, dtype=work, device=device)
        rhs[:, 0] = 1.0
        finite = torch.ones(batch, m, dtype=torch.bool, device=device)  # g_i (hence f_i) finite
        onehot = torch.eye(m, dtype=work, device=device)  # fallback coefficients: the latest f
        reg = self.regularization + 1e-10
        guard = solver_precision(device)
        x = z0.to(work)
        iterates = IterateBuffers(self, x)
        for k in range(max_iter):
            z = x.to(z0.dtype)
            fx = call_fn(fn, z, tracker)
            slot = k % m
            n = min(k + 1, m)
            with guard:
                f_slot, g_slot = fs[:, slot], gs[:, slot]
                f_slot.copy_(fx)
                torch.sub(f_slot, x, out=g_slot)
                # g_slot^T G^T as a (1, n) row: on CPU this layout of the product is ~2x faster than G g_slot.
                row = torch.bmm(g_slot.unsqueeze(1), gs[:, :n].transpose(1, 2)).squeeze(1)
                sq_norm = row[:, slot]
                if z is x and torch.promote_types(fx.dtype, torch.float32) == work:
                    # g_slot is exactly the residual f(z) - z: ||g||^2 is the new diagonal entry.
                    abs_res, rel_res = squared_norm_residuals(sq_norm, f_slot)
                else:
                    abs_res, rel_res = residual_norms(fx, z)
            # Iterates after the first are this solver's own buffers, not written while the tracker holds them.
            done = tracker.update(z, abs_res, rel_res, owned=k > 0)
            if k == max_iter - 1 or tracker.should_stop(done):
                return
            with guard:
                finite[:, slot] = sq_norm < float("inf")  # g . g >= 0: false for inf and NaN
                s_new = sq_norm.clamp_min(1e-30).rsqrt_()
                scale[:, slot] = s_new
                scaled = row.mul_(scale[:, :n]).mul_(s_new.unsqueeze(1))
                system[:, slot + 1, 1 : n + 1] = scaled
                system[:, 1 : n + 1, slot + 1] = scaled
                system[:, slot + 1, slot + 1] += reg
                system[:, 0, slot + 1] = s_new
                system[:, slot + 1, 0] = s_new
                alpha = self._coefficients(system[:, : n + 1, : n + 1], rhs[:, : n + 1], scale[:, :n])
                alpha = torch.where(alpha[1], alpha[0], onehot[slot, :n])
                x_next = iterates.take(tracker, x)
                alpha = alpha.unsqueeze(1)
                torch.bmm(alpha, fs[:, :n], out=x_next.unsqueeze(1))
                if self.mixing != 1.0:
                    x_next.unsqueeze(1).baddbmm_(alpha, gs[:, :n], alpha=-(1.0 - self.mixing))
                # x_next mixes every stored f: it is finite where they all are (a cheap per-sample test).
                x = restart_where(x_next, finite[:, :n].all(dim=1), tracker)

    def init_state(self, z0: Tensor, out: State | None = None, max_iter: int | None = None) -> State:
        """``_solve``'s buffers at full size: unwritten history slots are zero (they add nothing to any
        product), and the bordered system has an identity block for them (their coefficients are 0). Written
        into ``out``'s buffers when given (``stepped.filled``)."""
        batch, dim = z0.shape
        m, device = self.memory, z0.device
        work = torch.promote_types(z0.dtype, torch.float32)
        system = filled(out, "system", 0.0, (batch, m + 1, m + 1), work, device)
        system[:, 1:, 1:] = torch.eye(m, dtype=work, device=device)
        return {
            **new_state(z0, out),
            "x": copied(out, "x", z0, work),
            "fs": filled(out, "fs", 0.0, (batch, m, dim), work, device),
            "gs": filled(out, "gs", 0.0, (batch, m, dim), work, device),
            "system": system,
            "scale": filled(out, "scale", 0.0, (batch, m), work, device),
            "finite": filled(out, "finite", True, (batch, m), torch.bool, device),
        }

    def step(self, fn: FixedPointFn, state: State, tol: float, stop_mode: str) -> None:
        """``_solve``'s iteration on a fixed-shape ``state`` (``hf_deq.deq.solvers.stepped``): the slot written
        is ``count % memory``, chosen by masks, so every iteration is the same computation."""
        x, fs, gs, system, scale, finite = (state[k] for k in ("x", "fs", "gs", "system", "scale", "finite"))
        best_z = state["best_z"]
        work, m = x.dtype, self.memory
        z = x.to(best_z.dtype)
        fx = check_step_shape(fn(z), z)
        slot = (state["count"] % m).view(1)
        selected = torch.arange(m, device=x.device) == slot  # (m,): the slot written now
        with solver_precision(x.device):
            g = fx.to(work) - x
            fs.index_copy_(1, slot, fx.to(work).unsqueeze(1))
            gs.index_copy_(1, slot, g.unsqueeze(1))
            row = torch.bmm(g.unsqueeze(1), gs.transpose(1, 2)).squeeze(1)  # (B, m), 0 at unwritten slots
            sq_norm = (row * selected).sum(dim=1)
            if z is x and torch.promote_types(fx.dtype, torch.float32) == work:
                abs_res, rel_res = squared_norm_residuals(sq_norm, fx.to(work))
            else:
                abs_res, rel_res = residual_norms(fx, z)
        record(state, z, abs_res, rel_res, tol, stop_mode)
        with solver_precision(x.device):
            finite.copy_(torch.where(selected, (sq_norm < float("inf")).unsqueeze(1), finite))
            s_new = sq_norm.clamp_min(1e-30).rsqrt().unsqueeze(1)
            scale.copy_(torch.where(selected, s_new, scale))
            scaled = row * scale * s_new
            # Row and column slot + 1 of the bordered system: [s_new, scaled + reg e_slot].
            reg = selected.to(work) * (self.regularization + 1e-10)
            border = torch.cat([s_new, scaled + reg], dim=1)
            at = torch.cat([selected.new_zeros(1), selected])  # (m + 1,)
            new_system = torch.where(at[:, None], border.unsqueeze(1), system)
            system.copy_(torch.where(at, border.unsqueeze(2), new_system))
            rhs = (torch.arange(m + 1, device=x.device) == 0).to(work).expand(x.shape[0], m + 1)
            alpha, ok = self._coefficients(system, rhs, scale, own_threads=False)
            alpha = torch.where(ok, alpha, selected.to(work)).unsqueeze(1)
            x_next = torch.bmm(alpha, fs).squeeze(1)
            if self.mixing != 1.0:
                x_next = x_next - (1.0 - self.mixing) * torch.bmm(alpha, gs).squeeze(1)
            restart = finite.all(dim=1, keepdim=True)
            x.copy_(torch.where(restart, x_next, best_z.to(work)))

    @staticmethod
    def _coefficients(
        system: Tensor, rhs: Tensor, scale: Tensor, own_threads: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Per sample, minimise ``a^T H a`` with ``sum(a) = 1``; return ``(a, ok)`` (never raises).

        ``H`` is scaled to unit diagonal first (``S H S`` with ``S = diag(H)^{-1/2}``), so residuals of very
        different sizes do not make the system ill-conditioned, then regularised by ``regularization * I``.
        The bordered system ``[[0, s^T], [s, S H S + reg I]] [mu, b] = [1, 0]`` gives ``a = S b``. ``ok`` is
        false where the solve failed; the caller falls back to a plain fixed-point step there.
        ``own_threads=False`` (inside a compiled step, which cannot change the thread count) keeps the
        threads as they are.
        """
        with small_solve_threads(system.device) if own_threads else contextlib.nullcontext():
            solution, info = torch.linalg.solve_ex(system, rhs)
        alpha = solution[:, 1:].mul_(scale)
        # A non-finite entry makes the sum non-finite (NaN < inf is false); so would an overflow, also a failure.
        ok = (alpha.sum(dim=1, keepdim=True).abs() < float("inf")).logical_and_((info == 0).unsqueeze(1))
        return alpha, ok
