"""Damped fixed-point (Picard) iteration."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    BestIterateTracker,
    FixedPointFn,
    Solver,
    check_check_every,
    evaluate,
    residual_norms,
    restart_nonfinite,
)
from .stepped import State, check_step_shape, copied, new_state, record


class FixedPointIteration(Solver):
    """``z_{t+1} = damping * f(z_t) + (1 - damping) * z_t`` (naive forward iteration, DEQ eq. 2).

    Args:
        damping: step size in ``(0, 1]``; 1 is plain iteration.
        check_every: the host reads the stop test every this many evaluations; ``None`` (or 0): only at the
            end of ``max_iter`` (see ``hf_deq.deq.solvers.base``).
    """

    label = "fixed-point iteration"
    description = "damped iteration z <- damping f(z) + (1 - damping) z (DEQ paper, Bai et al. 2019, eq. 2)"

    has_step = True

    def __init__(self, damping: float = 1.0, check_every: int | None = 1) -> None:
        if not isinstance(damping, (int, float)) or isinstance(damping, bool) or not 0 < damping <= 1:
            raise ValueError(f"FixedPointIteration.damping must be in (0, 1], got {damping!r}")
        self.damping = float(damping)
        self.check_every = check_check_every("FixedPointIteration", check_every)

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        z = z0
        for _ in range(max_iter):
            fz, done = evaluate(fn, z, tracker)
            if tracker.should_stop(done):
                return
            z_next = fz if self.damping == 1.0 else z + self.damping * (fz.to(z.dtype) - z)
            z = restart_nonfinite(z_next.to(z0.dtype), tracker)

    def init_state(self, z0: Tensor, out: State | None = None, max_iter: int | None = None) -> State:
        return {**new_state(z0, out), "x": copied(out, "x", z0, z0.dtype)}

    def step(self, fn: FixedPointFn, state: State, tol: float, stop_mode: str) -> None:
        """``_solve``'s iteration on a fixed-shape ``state`` (``hf_deq.deq.solvers.stepped``)."""
        x = state["x"]
        fz = check_step_shape(fn(x), x)
        abs_res, rel_res = residual_norms(fz, x)
        record(state, x, abs_res, rel_res, tol, stop_mode)
        z_next = fz if self.damping == 1.0 else x + self.damping * (fz.to(x.dtype) - x)
        z_next = z_next.to(x.dtype)
        finite = torch.isfinite(z_next).all(dim=1, keepdim=True)
        x.copy_(torch.where(finite, z_next, state["best_z"].to(x.dtype)))
