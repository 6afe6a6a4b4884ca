"""Limited-memory ("good") Broyden's method on ``g(z) = f(z) - z``."""

from __future__ import annotations

import torch
from torch import Tensor

from .anderson import _check_float, _check_int
from .base import (
    BestIterateTracker,
    FixedPointFn,
    IterateBuffers,
    Solver,
    call_fn,
    check_check_every,
    residual_norms,
    restart_where,
    sanitize,
    solver_precision,
    squared_norm_residuals,
)
from .stepped import State, check_step_shape, copied, filled, new_state, record


class Broyden(Solver):
    """Broyden's quasi-Newton method for ``g(z) = f(z) - z = 0`` (DEQ paper, Bai et al. 2019, sec. 3.1.1).

    The inverse Jacobian of ``g`` is kept as ``B = -I + sum_i u_i v_i^T`` over at most ``memory`` rank-one
    updates in a ring buffer (the oldest is dropped when it is full), so the state is
    ``batch x (2 memory + 3) x dim`` whatever ``max_iter`` is. Each step makes two passes over the history
    (``O(memory * D)``): one product for every dot product it needs, one for ``u``, ``v`` and the next
    ``B g`` together (see ``_update``).

    Args:
        memory: number of rank-one updates kept.
        step_size: scale of the quasi-Newton step ``-step_size * B g``.
        check_every: the host reads the stop test every this many evaluations; ``None`` (or 0): only at the
            end of ``max_iter`` (see ``hf_deq.deq.solvers.base``).
    """

    label = "Broyden"
    description = (
        "Broyden's quasi-Newton method on g(z) = f(z) - z with a limited-memory inverse Jacobian "
        "(DEQ paper, Bai et al. 2019, sec. 3.1.1)"
    )

    has_step = True

    def __init__(self, memory: int = 20, step_size: float = 1.0, check_every: int | None = 1) -> None:
        self.memory = _check_int("Broyden.memory", memory, 1)
        self.step_size = _check_float("Broyden.step_size", step_size, 0.0, 1.0, low_open=True)
        self.check_every = check_check_every("Broyden", check_every)

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        batch, dim = z0.shape
        m, step = self.memory, self.step_size
        work = torch.promote_types(z0.dtype, torch.float32)
        guard = solver_precision(z0.device)
        # Rows 0 and 1: the latest residual g and y = g - g_previous (which is which alternates, so that
        # neither is ever copied); row 2: b = B g; rows 3 + 2i and 4 + 2i: u_i and v_i. Only the first
        # 3 + 2 min(n_updates, memory) rows are ever read, and each is written first.
        rows = self.workspace("rows", (batch, 3 + 2 * m, dim), work, z0.device)
        products = self.workspace("products", (batch, 3, dim), work, z0.device)  # u', v', B+ g_new
        x = z0.to(work)
        iterates = IterateBuffers(self, x)
        z = x.to(z0.dtype)
        fx = call_fn(fn, z, tracker)
        g_at = 0
        with guard:
            g = torch.sub(fx, x, out=rows[:, g_at])
            abs_res, rel_res = residual_norms(fx, z)
            g_ok = abs_res < float("inf")
            sanitize(g, g_ok, tracker)
            torch.neg(g, out=rows[:, 2])  # B g with B = -I
        done = tracker.update(z, abs_res, rel_res, owned=False)
        n_updates = 0
        for k in range(1, max_iter):
            if tracker.should_stop(done):
                return
            with guard:
                x_new = torch.add(x, rows[:, 2], alpha=-step, out=iterates.take(tracker, x))
                x_new = restart_where(x_new, g_ok, tracker)
            z = x_new.to(z0.dtype)
            fx = call_fn(fn, z, tracker)
            n = min(n_updates, m)
            y_at, g_at = g_at, 1 - g_at
            with guard:
                g_new = torch.sub(fx, x_new, out=rows[:, g_at])
                torch.sub(g_new, rows[:, y_at], out=rows[:, y_at])
                # One product gives every dot product of the step: of g_new, y and b with g_new, y, b and
                # each u_i, v_i.
                dots = torch.bmm(rows[:, :3], rows[:, : 3 + 2 * n].transpose(1, 2))
                if z is x_new and torch.promote_types(fx.dtype, torch.float32) == work:
                    abs_res, rel_res = squared_norm_residuals(dots[:, g_at, g_at], fx)
                else:
                    abs_res, rel_res = residual_norms(fx, z)
            # x_new is this solver's own buffer, not written while the tracker holds it.
            done = tracker.update(z, abs_res, rel_res, owned=True)
            if k == max_iter - 1:
                return
            with guard:
                new_ok = abs_res < float("inf")
                sanitize(rows[:, :2], new_ok, tracker)
                dropped = n_updates % m if n == m else None
                self._update(rows, products, dots, n, g_at, dropped, g_ok & new_ok, new_ok)
            g_ok = new_ok
            n_updates += 1
            x = x_new

    def _update(
        self,
        rows: Tensor,
        products: Tensor,
        dots: Tensor,
        n: int,
        g_at: int,
        dropped: int | None,
        ok: Tensor,
        new_ok: Tensor,
    ) -> None:
        """The good-Broyden update of ``B`` after the step ``dx = -step_size B g`` (Sherman-Morrison):
        ``B+ = B + u v^T`` with ``v = B^T dx``, ``u = (dx - B y) / (v . y)``, ``y = g_new - g``.

        ``B^T dx = -s (-b + sum_i (u_i . b) v_i)`` and ``B y = -y + sum_i (v_i . y) u_i`` make every scalar a
        combination of ``dots`` (``v . y = -s (-b . y + sum_i (u_i . b)(v_i . y))``, exactly 0 when ``y`` is),
        so ``u``, ``v`` (stored as ``-s u`` and ``v / -s``: the same ``u v^T``) and ``B+ g_new`` are one
        product of a ``(3, 3 + 2n)`` coefficient matrix with the rows, one more pass over the history. The
        slot ``dropped`` (the oldest, once ``memory`` updates are kept) is replaced, and its term leaves
        ``B+ g_new``. Updates that are not ``ok`` or not safe (``|v . y| <= 1e-20``) are skipped.
        """
        s = self.step_size
        y_at = 1 - g_at
        cols = 3 + 2 * n
        okf = new_ok.to(rows.dtype).unsqueeze(1)
        # Zero (not NaN) where g_new is not finite: those samples only keep b_new = B g_new (sanitised).
        c1 = torch.nan_to_num(dots[:, g_at, 4:cols:2] * okf, nan=0.0)  # v_i . g_new
        vy = torch.nan_to_num(dots[:, y_at, 4:cols:2] * okf, nan=0.0)  # v_i . y
        c2 = dots[:, 2, 3:cols:2]  # u_i . b
        q = (dots[:, 2, g_at] - (c1 * c2).sum(dim=1)) * s  # v . g_new
        denom = (dots[:, 2, y_at] - (vy * c2).sum(dim=1)) * s  # v . y
        ok = ok & (denom.abs() > 1e-20) & (denom.abs() < float("inf"))
        r = torch.where(ok, denom.reciprocal(), 0.0)
        qr = torch.where(ok, q, 0.0) * r
        keep = ok.to(rows.dtype)
        coeff = rows.new_zeros(rows.shape[0], 3, cols)
        # u' = -s u = (-s / (v . y)) (-s b + y - sum_i (v_i . y) u_i)
        coeff[:, 0, 2] = (s * s) * r
        coeff[:, 0, y_at] = -s * r
        # v' = v / -s = -b + sum_i (u_i . b) v_i
        coeff[:, 1, 2] = -keep
        # B+ g_new = -g_new + sum_i (v_i . g_new) u_i + (v . g_new) u  (- (v_o . g_new) u_o, dropped slot o)
        coeff[:, 2, g_at] = -1.0
        coeff[:, 2, 2] = -s * qr
        coeff[:, 2, y_at] = qr
        if n:
            coeff[:, 0, 3:cols:2] = vy * (s * r).unsqueeze(1)
            coeff[:, 1, 4:cols:2] = c2 * keep.unsqueeze(1)
            coeff[:, 2, 3:cols:2] = c1 - vy * qr.unsqueeze(1)
            if dropped is not None:
                coeff[:, 2, 3 + 2 * dropped] -= c1[:, dropped]
        torch.bmm(coeff, rows[:, :cols], out=products)
        slot = n if dropped is None else dropped
        rows[:, 3 + 2 * slot : 5 + 2 * slot].copy_(products[:, :2])
        rows[:, 2].copy_(products[:, 2])

    def init_state(self, z0: Tensor, out: State | None = None, max_iter: int | None = None) -> State:
        """``_solve``'s buffers at full size: the latest (sanitised) residual ``g``, ``b = B g`` and the
        history ``u_i, v_i`` (rows ``2i``, ``2i + 1``), zero where not yet written; ``b = 0`` makes the first
        step evaluate ``z0`` itself. Separate tensors, so that each step writes each in place once. Written
        into ``out``'s buffers when given (``stepped.filled``). A solve of ``max_iter`` evaluations writes at
        most ``max_iter - 1`` updates, so with ``max_iter <= memory`` the ring keeps only that many slots: it
        never wraps, as the full one would not, and every step's passes over the history shrink with it."""
        batch, dim = z0.shape
        device = z0.device
        slots = self.memory if max_iter is None else min(self.memory, max(max_iter - 1, 1))
        work = torch.promote_types(z0.dtype, torch.float32)
        return {
            **new_state(z0, out),
            "x": copied(out, "x", z0, work),
            "g": filled(out, "g", 0.0, (batch, dim), work, device),
            "b": filled(out, "b", 0.0, (batch, dim), work, device),
            "history": filled(out, "history", 0.0, (batch, 2 * slots, dim), work, device),
            "g_ok": filled(out, "g_ok", True, (batch,), torch.bool, device),
            "n_updates": filled(out, "n_updates", 0, (), torch.long, device),
        }

    def step(self, fn: FixedPointFn, state: State, tol: float, stop_mode: str) -> None:
        """``_solve``'s iteration on a fixed-shape ``state`` (``hf_deq.deq.solvers.stepped``): the step from
        ``x``, one evaluation, and the update of ``_update`` written into slot ``n_updates % memory`` (masked
        off at the first evaluation, which only sets ``g`` and ``b = -g``)."""
        x, g, b, history = state["x"], state["g"], state["b"], state["history"]
        g_ok, n_updates = state["g_ok"], state["n_updates"]
        best_z = state["best_z"]
        work, m, s = x.dtype, history.shape[1] // 2, self.step_size  # m: the slots kept (init_state)
        first = state["count"] == 0
        with solver_precision(x.device):
            x_new = torch.add(x, b, alpha=-s)
            x_new = torch.where(g_ok.unsqueeze(1), x_new, best_z.to(work))
        z = x_new.to(best_z.dtype)
        fx = check_step_shape(fn(z), z)
        with solver_precision(x.device):
            g_new = fx.to(work) - x_new
            head = torch.stack([g_new, g_new - g, b], dim=1)  # g_new, y, b
            dots_head = torch.bmm(head, head.transpose(1, 2))  # (B, 3, 3)
            dots = torch.bmm(head, history.transpose(1, 2))  # (B, 3, 2m): with u_i, v_i
            if z is x_new and torch.promote_types(fx.dtype, torch.float32) == work:
                abs_res, rel_res = squared_norm_residuals(dots_head[:, 0, 0], fx)
            else:
                abs_res, rel_res = residual_norms(fx, z)
        record(state, z, abs_res, rel_res, tol, stop_mode)
        with solver_precision(x.device):
            new_ok = abs_res < float("inf")
            head = torch.nan_to_num(head[:, :2], nan=0.0, posinf=0.0, neginf=0.0)  # sanitised g_new, y
            head = torch.cat([head, b.unsqueeze(1)], dim=1)
            # _update's coefficients over all memory slots (unwritten ones are zero rows: zero dots).
            okf = new_ok.to(work).unsqueeze(1)
            c1 = torch.nan_to_num(dots[:, 0, 1::2] * okf, nan=0.0)  # v_i . g_new
            vy = torch.nan_to_num(dots[:, 1, 1::2] * okf, nan=0.0)  # v_i . y
            c2 = dots[:, 2, 0::2]  # u_i . b
            q = (dots_head[:, 2, 0] - (c1 * c2).sum(dim=1)) * s  # v . g_new
            denom = (dots_head[:, 2, 1] - (vy * c2).sum(dim=1)) * s  # v . y
            ok = g_ok & new_ok & (denom.abs() > 1e-20) & (denom.abs() < float("inf"))
            r = torch.where(ok, denom.reciprocal(), 0.0)
            qr = torch.where(ok, q, 0.0) * r
            keep = ok.to(work)
            slot = n_updates % m
            dropped = (torch.arange(m, device=x.device) == slot) & (n_updates >= m)
            zero = torch.zeros_like(r)
            coeff_head = torch.stack(
                [
                    torch.stack([zero, -s * r, (s * s) * r], dim=1),  # u' = -s u
                    torch.stack([zero, zero, -keep], dim=1),  # v' = v / -s
                    torch.stack([torch.full_like(r, -1.0), qr, -s * qr], dim=1),  # B+ g_new
                ],
                dim=1,
            )
            zeros = torch.zeros_like(c1)
            b_on_u = c1 - vy * qr.unsqueeze(1) - torch.where(dropped, c1, 0.0)
            coeff_history = torch.stack(
                [
                    torch.stack([vy * (s * r).unsqueeze(1), zeros], dim=2).flatten(1),
                    torch.stack([zeros, c2 * keep.unsqueeze(1)], dim=2).flatten(1),
                    torch.stack([b_on_u, zeros], dim=2).flatten(1),
                ],
                dim=1,
            )
            products = torch.bmm(coeff_head, head) + torch.bmm(coeff_history, history)
            at = 2 * slot + torch.arange(2, device=x.device)
            new_uv = torch.where(first, history.index_select(1, at), products[:, :2])
            history.index_copy_(1, at, new_uv)
            g.copy_(head[:, 0])
            b.copy_(torch.where(first, -head[:, 0], products[:, 2]))
            g_ok.copy_(new_ok)
            n_updates.copy_(n_updates + (~first).long())
            x.copy_(x_new)
