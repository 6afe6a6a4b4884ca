"""The bookkeeping of a solve as a fixed-shape state of tensors, for solvers run one compiled step at a time.

``compile_solve`` (``hf_deq.deq.compile.CompiledSolve``) runs a solve as a Python loop that calls one compiled
function per evaluation of ``f``: the solver's ``step(fn, state, tol, stop_mode)``. The state is a dict of
tensors whose shapes never change during the solve: the solver's own buffers (ring buffers of history with the
not-yet-written slots zero, so that they contribute nothing) and the per-sample bookkeeping of
``BestIterateTracker`` made from tensors only: the evaluation count and the "still running" flag are 0-d
tensors, not Python ints, so every iteration is the same graph. ``step`` updates the state in place, reads
nothing on the host, and once every sample is below ``tol`` freezes the bookkeeping (as ``check_every != 1``
does in the eager solvers), so the result does not depend on when the host reads ``running``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SolverResult

State = dict[str, Tensor]


def filled(
    out: State | None,
    name: str,
    value: float,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """A state buffer of ``value``: ``out[name]`` refilled in place (a solve reusing the buffers of the previous
    one allocates nothing: fresh pages cost more than the fill), or a new tensor when ``out`` is ``None``."""
    if out is not None:
        return out[name].fill_(value)
    return torch.full(shape, value, dtype=dtype, device=device)


def copied(out: State | None, name: str, source: Tensor, dtype: torch.dtype) -> Tensor:
    """A state buffer holding ``source`` in ``dtype``: ``out[name]`` overwritten in place, or a new copy."""
    if out is not None:
        return out[name].copy_(source)
    return source.detach().to(dtype, copy=True)


def new_state(z0: Tensor, out: State | None = None) -> State:
    """The bookkeeping of ``BestIterateTracker`` for a solve from ``z0`` (``(B, D)``), as tensors (written into
    ``out``'s buffers when given, see ``filled``)."""
    batch, device = z0.shape[0], z0.device
    # Default dtype for the residuals, as BestIterateTracker keeps them.
    real = torch.get_default_dtype()
    return {
        "best_z": copied(out, "best_z", z0, z0.dtype),
        "best_abs": filled(out, "best_abs", float("inf"), (batch,), real, device),
        "best_rel": filled(out, "best_rel", float("inf"), (batch,), real, device),
        "nstep": filled(out, "nstep", 0, (batch,), torch.long, device),
        "count": filled(out, "count", 0, (), torch.long, device),
        "running": filled(out, "running", True, (), torch.bool, device),
    }


def check_step_shape(fz: Tensor, z: Tensor) -> Tensor:
    """``fz`` if ``f`` kept the state shape (checked once, when the step is traced)."""
    if fz.shape != z.shape:
        raise ValueError(
            f"the fixed-point function changed the state shape from {tuple(z.shape)} to {tuple(fz.shape)}"
        )
    return fz


def record(state: State, z: Tensor, abs_res: Tensor, rel_res: Tensor, tol: float, stop_mode: str) -> None:
    """``BestIterateTracker.update`` (with ``check_every != 1``) on ``state``, in place, branch-free: keep
    per sample the lowest-residual iterate and the evaluation count at which it was seen, count the
    evaluation, and turn ``running`` off once every sample's best residual is below ``tol``."""
    best_abs, best_rel, running = state["best_abs"], state["best_rel"], state["running"]
    current = rel_res if stop_mode == "rel" else abs_res
    best = best_rel if stop_mode == "rel" else best_abs
    improved = (current < best) & running
    count = state["count"] + 1
    best_z = state["best_z"]
    best_z.copy_(torch.where(improved.unsqueeze(1), z.to(best_z.dtype), best_z))
    best_abs.copy_(torch.where(improved, abs_res.to(best_abs.dtype), best_abs))
    best_rel.copy_(torch.where(improved, rel_res.to(best_rel.dtype), best_rel))
    state["nstep"].copy_(torch.where(improved, count, state["nstep"]))
    state["count"].copy_(count)
    best = best_rel if stop_mode == "rel" else best_abs
    running.copy_(running & ~(best <= tol).all())


def result_of(state: State, nfev: int, tol: float, stop_mode: str) -> SolverResult:
    """The ``SolverResult`` of a finished solve (copies: the state's buffers serve the next solve)."""
    best = state["best_rel"] if stop_mode == "rel" else state["best_abs"]
    return SolverResult(
        z=state["best_z"].clone(),
        nstep=state["nstep"].clone(),
        abs_residual=state["best_abs"].clone(),
        rel_residual=state["best_rel"].clone(),
        converged=best <= tol,
        nfev=nfev,
        stop_mode=stop_mode,
        tol=tol,
    )
