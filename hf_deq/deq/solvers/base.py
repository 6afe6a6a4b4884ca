"""Solver base class, the result type and the per-sample bookkeeping every solver shares.

A solver finds ``z* = f(z*)`` for a batch of states ``z`` of shape ``(B, D)`` (DEQ paper, Bai et al. 2019,
eq. 2). Every sample stops on its own: the batch stops once all samples are below ``tol``, and each sample
reports the best (lowest-residual) iterate it saw, with the step at which it was seen.

How often the host looks at the stop test is a solver hyperparameter, ``check_every``. With 1 (the default)
the batch stops right after the first evaluation at which every sample is below ``tol``. With ``k > 1`` the
stop test stays on the device and the host reads it only every ``k`` evaluations; with ``None`` (or 0) it
never reads it and the whole budget runs. Between two reads the loop makes no host synchronisation and no
data-dependent Python branch (CUDA-graph friendly). The per-sample statistics do not depend on
``check_every``: once every sample is below ``tol`` the bookkeeping freezes on the device, so ``z``,
``nstep``, the residuals and ``converged`` are those of the evaluation at which the batch converged; only
``nfev`` (and ``trace``) count the extra evaluations.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

FixedPointFn = Callable[[Tensor], Tensor]

STOP_MODES = ("rel", "abs")
_EPS = 1e-8


@dataclass(frozen=True)
class SolverResult:
    """What a solve returns.

    Attributes:
        z: the best iterate per sample, ``(B, D)``, detached.
        nstep: ``(B,)`` number of function evaluations after which the returned iterate was reached.
        abs_residual: ``(B,)`` ``||f(z) - z||``.
        rel_residual: ``(B,)`` ``||f(z) - z|| / (||f(z)|| + eps)``.
        converged: ``(B,)`` bool, residual (in ``stop_mode``) below ``tol``.
        nfev: total number of calls of ``f`` on the batch.
        trace: optional ``(T, B)`` residual (in ``stop_mode``) after every evaluation.
        jacobian_loss: Jacobian regularization term, set by ``DEQFixedPoint`` when it is asked for.
    """

    z: Tensor
    nstep: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    nfev: int
    stop_mode: str = "rel"
    tol: float = 0.0
    trace: Tensor | None = None
    jacobian_loss: Tensor | None = None

    @property
    def residual(self) -> Tensor:
        """The residual the stop rule used (``rel_residual`` or ``abs_residual``)."""
        return self.rel_residual if self.stop_mode == "rel" else self.abs_residual

    def replace(self, **changes) -> SolverResult:
        return dataclasses.replace(self, **changes)


def check_solve_args(max_iter: int, tol: float, stop_mode: str) -> None:
    """Validate the arguments every ``solve`` takes; raise ``ValueError`` naming the bad one."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"stop_mode must be one of {list(STOP_MODES)}, got {stop_mode!r}")


def check_check_every(owner: str, value: object) -> int | None:
    """Validate a solver's ``check_every``: an integer >= 1, or ``None``/0 for "only at the end"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{owner}.check_every must be an integer >= 1 (host reads the stop test every that many "
            f"evaluations) or None/0 (never; run max_iter), got {value!r}"
        )
    return value


def residual_norms(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample absolute and relative residual of ``z`` given ``fz = f(z)``, in float32 or wider.

    Non-finite residuals become ``inf`` so that they never count as the best iterate.
    """
    dtype = torch.promote_types(fz.dtype, torch.float32)
    fz = fz.to(dtype)
    return difference_norms(fz - z.to(dtype), fz)


def difference_norms(diff: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """``residual_norms`` from a precomputed ``diff = f(z) - z`` and ``f(z)``, both already in the residual
    dtype (``promote_types(f(z).dtype, float32)``): solvers that form ``f(z) - z`` anyway reuse it."""
    abs_res = torch.linalg.vector_norm(diff.flatten(1), dim=1)
    rel_res = abs_res / (torch.linalg.vector_norm(fz.flatten(1), dim=1) + _EPS)
    inf = float("inf")
    return torch.nan_to_num(abs_res, nan=inf, posinf=inf), torch.nan_to_num(rel_res, nan=inf, posinf=inf)


def squared_norm_residuals(sq_norm: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """``residual_norms`` from a precomputed ``||f(z) - z||^2`` (e.g. a Gram diagonal) and ``f(z)``."""
    abs_res = sq_norm.sqrt()
    rel_res = abs_res / (torch.linalg.vector_norm(fz.flatten(1), dim=1) + _EPS)
    inf = float("inf")
    return torch.nan_to_num(abs_res, nan=inf, posinf=inf), torch.nan_to_num(rel_res, nan=inf, posinf=inf)


def host_sync_is_free(t: Tensor) -> bool:
    """True where reading a tensor's value on the host costs no device synchronisation (CPU tensors).

    There, a data-dependent branch that skips a full-state pass is a pure saving; on an accelerator the
    solvers keep branch-free tensor ops instead, so that a step adds no synchronisation to the one the stop
    test already needs.
    """
    return t.device.type == "cpu"


class BestIterateTracker:
    """Keeps, per sample, the lowest-residual iterate seen so far and the step it was seen at.

    With ``check_every != 1`` (see the module docstring) it also keeps ``running``, a device flag that turns
    off at the evaluation where every sample is below ``tol``; later evaluations then change nothing, and
    every update is branch-free (no host read).
    """

    def __init__(
        self, z0: Tensor, stop_mode: str, tol: float, keep_trace: bool, check_every: int | None = 1
    ) -> None:
        batch = z0.shape[0]
        self.stop_mode = stop_mode
        self.tol = tol
        self.check_every = check_every
        self.sync_free = check_every != 1
        self.running = torch.ones((), dtype=torch.bool, device=z0.device) if self.sync_free else None
        #: True where the solver may branch on tensor values (CPU, host checked every evaluation).
        self.may_branch = not self.sync_free and host_sync_is_free(z0)
        self.z = z0.detach().clone()
        self.abs = torch.full((batch,), float("inf"), device=z0.device)
        self.rel = torch.full((batch,), float("inf"), device=z0.device)
        self.nstep = torch.zeros(batch, dtype=torch.long, device=z0.device)
        self.nfev = 0
        self.trace: list[Tensor] | None = [] if keep_trace else None

    @property
    def best(self) -> Tensor:
        return self.rel if self.stop_mode == "rel" else self.abs

    def update(self, z: Tensor, abs_res: Tensor, rel_res: Tensor, *, owned: bool = False) -> Tensor:
        """Record the residual of iterate ``z``; return the per-sample mask of samples below ``tol``.

        By default the improved samples of ``z`` are copied into the tracker's own buffer, so a solver may
        reuse or modify ``z`` afterwards. ``owned=True`` hands ``z`` over: the calling solver promises that
        ``z`` is a tensor it created, shares no storage with the caller's ``z0``, that it does not modify
        ``z`` while the tracker holds it (``tracker.z is z``; ``IterateBuffers`` makes sure of that) and does
        not read it after its next evaluation has been recorded. The tracker may then keep ``z`` itself
        instead of a copy, and later merge better samples into it in place.
        """
        current = rel_res if self.stop_mode == "rel" else abs_res
        improved = current < self.best
        if self.running is not None:
            improved = improved & self.running
        self._update_z(z.detach(), improved, owned)
        self.abs = torch.where(improved, abs_res.to(self.abs.dtype), self.abs)
        self.rel = torch.where(improved, rel_res.to(self.rel.dtype), self.rel)
        self.nstep = torch.where(improved, torch.full_like(self.nstep, self.nfev), self.nstep)
        if self.trace is not None:
            self.trace.append(current.detach().clone())
        done = self.best <= self.tol
        if self.running is not None:
            self.running = self.running & ~done.all()
        return done

    def should_stop(self, done: Tensor) -> bool:
        """Whether the solver stops after the evaluation just recorded (``done`` is what ``update`` returned).

        ``check_every == 1``: every sample is below ``tol`` (one host read). Otherwise the host reads the
        device flag only every ``check_every`` evaluations, and never with ``None``/0.
        """
        if not self.sync_free:
            return bool(done.all())
        if not self.check_every or self.nfev % self.check_every:
            return False
        return not bool(self.running)

    def _update_z(self, z: Tensor, improved: Tensor, owned: bool) -> None:
        """``self.z`` is always writable: the tracker's own buffer or an iterate handed over by the solver.
        Merges happen in place, so no step holds more than one best-iterate buffer."""
        z = z.to(self.z.dtype)
        if not self.may_branch:
            torch.where(improved.unsqueeze(1), z, self.z, out=self.z)  # branch-free: no synchronisation
        elif bool(improved.all()):  # the common case on CPU
            if owned:
                self.z = z
            else:
                self.z.copy_(z)
        elif bool(improved.any()):
            torch.where(improved.unsqueeze(1), z, self.z, out=self.z)

    def result(self) -> SolverResult:
        return SolverResult(
            z=self.z,
            nstep=self.nstep,
            abs_residual=self.abs,
            rel_residual=self.rel,
            converged=self.best <= self.tol,
            nfev=self.nfev,
            stop_mode=self.stop_mode,
            tol=self.tol,
            trace=torch.stack(self.trace) if self.trace else None,
        )


class Solver:
    """Base class of fixed-point solvers.

    Subclasses hold their hyperparameters as constructor arguments and implement ``_solve``. ``solve`` runs
    without autograd, validates its arguments and returns a ``SolverResult``.
    """

    #: Short name on the model card (``"Anderson"``); a subclass without its own shows its registry name.
    label: str = ""
    #: One line on the method, citing its paper (the model card's solver row); without it, the first paragraph
    #: of the class docstring.
    description: str = ""

    #: True for solvers that are only correct on affine maps ``f(z) = A z + b`` (e.g. GMRES). They serve the
    #: linear backward problem of implicit differentiation and are refused as forward solvers.
    affine_only: bool = False
    #: How often the host reads the stop test (module docstring); solvers that support other values take it
    #: as a constructor argument.
    check_every: int | None = 1

    def solve(
        self,
        fn: FixedPointFn,
        z0: Tensor,
        *,
        max_iter: int,
        tol: float,
        stop_mode: str = "rel",
        return_trace: bool = False,
    ) -> SolverResult:
        """Find ``z = fn(z)`` from ``z0`` (``(B, D)``) within ``max_iter`` evaluations of ``fn``."""
        check_solve_args(max_iter, tol, stop_mode)
        if z0.dim() != 2:
            raise ValueError(f"z0 must have shape (batch, dim), got shape {tuple(z0.shape)}")
        with torch.no_grad():
            tracker = BestIterateTracker(z0, stop_mode, float(tol), return_trace, self.check_every)
            self.__dict__["_solving"] = self.__dict__.get("_solving", 0) + 1
            try:
                self._solve(fn, z0.detach(), max_iter, tracker)
            finally:
                self._solving -= 1
            kept = self.__dict__.get("_workspace", {}).values()
            if any(tracker.z.data_ptr() == buffer.data_ptr() for buffer in kept):
                tracker.z = tracker.z.clone()  # the next solve reuses the buffer
            return tracker.result()

    def _solve(self, fn: FixedPointFn, z0: Tensor, max_iter: int, tracker: BestIterateTracker) -> None:
        raise NotImplementedError

    #: True for solvers with a fixed-shape step (``init_state`` and ``step``), which ``compile_solve`` runs as
    #: one compiled function per iteration (``hf_deq.deq.solvers.stepped``); others are solved eagerly there.
    has_step: bool = False

    def init_state(
        self, z0: Tensor, out: dict[str, Tensor] | None = None, max_iter: int | None = None
    ) -> dict[str, Tensor]:
        """The state of a solve from ``z0`` (``stepped.new_state`` plus the solver's own buffers), written in
        place into ``out`` (a state of the same shapes) when given. ``max_iter``: the most evaluations any
        solve from this state makes (``None``: unknown); a solver may keep fewer history slots for it, where
        the slots it drops could never be written."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-shape step")

    def step(self, fn: FixedPointFn, state: dict[str, Tensor], tol: float, stop_mode: str) -> None:
        """One evaluation of ``fn`` and the update it allows, on ``state`` in place, without a host read."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-shape step")

    def workspace(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """An uninitialised buffer for the solve in progress.

        On CPU it is kept on the solver for the next solve of the same shape: the CPU allocator hands every
        large tensor fresh pages, and touching them first costs about as much as a pass over the history
        (a new 4 MiB output made a subtraction ~4x slower). On accelerators (whose caching allocators reuse
        memory anyway) and in a nested solve with the same solver, the buffer is new. Never returned to the
        caller: ``solve`` copies a best iterate out of it.
        """
        if device.type != "cpu" or self.__dict__.get("_solving", 0) > 1:
            return torch.empty(shape, dtype=dtype, device=device)
        kept = self.__dict__.setdefault("_workspace", {})
        buffer = kept.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype or buffer.device != device:
            buffer = kept[name] = torch.empty(shape, dtype=dtype, device=device)
        return buffer

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without the workspace buffers."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_workspace", "_solving")}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def no_autocast(device: torch.device) -> torch.autocast:
    """A context in which the solver's own linear algebra runs at the state's precision, not autocast's."""
    return torch.autocast(device_type=device.type, enabled=False)


def solver_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """``no_autocast`` where autocast is on when the solve starts, else a no-op context (entering autocast's
    context every step costs more than some of the small steps themselves). Reusable within one solve."""
    if torch.is_autocast_enabled(device.type):
        return no_autocast(device)
    return contextlib.nullcontext()


@contextlib.contextmanager
def small_solve_threads(device: torch.device) -> Iterator[None]:
    """Run a tiny batched LAPACK call (Anderson's or GMRES's few-by-few systems) on one CPU thread.

    Intra-op threads cost far more than they save on such systems: on a loaded 2-core machine a batched 6x6
    solve took ~20 ms with 2 threads and ~0.05 ms with 1. CUDA tensors are left alone.
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def call_fn(fn: FixedPointFn, z: Tensor, tracker: BestIterateTracker) -> Tensor:
    """Call ``fn`` once on ``z``, check the shape of the result and count the evaluation."""
    fz = fn(z)
    if fz.shape != z.shape:
        raise ValueError(
            f"the fixed-point function changed the state shape from {tuple(z.shape)} to {tuple(fz.shape)}"
        )
    tracker.nfev += 1
    return fz


def evaluate(
    fn: FixedPointFn, z: Tensor, tracker: BestIterateTracker, *, owned: bool = False
) -> tuple[Tensor, Tensor]:
    """Call ``fn`` once, record the residual of ``z``; return ``(f(z), done_mask)``.

    A sample whose ``f(z)`` is not finite gets an infinite residual, so the tracker keeps its best finite
    iterate. ``owned`` is passed on to ``BestIterateTracker.update``.
    """
    fz = call_fn(fn, z, tracker)
    abs_res, rel_res = residual_norms(fz, z)
    done = tracker.update(z, abs_res, rel_res, owned=owned)
    return fz, done


class IterateBuffers:
    """Preallocated ``(B, D)`` buffers that a solver writes its iterates into, in turn.

    A fresh multi-megabyte tensor every step costs page faults on first touch (on CPU, a batched product
    into a new output took twice as long as into a reused one). ``take`` returns a buffer that is neither
    the tracker's best iterate (which the tracker may hold, see ``BestIterateTracker.update``) nor any of
    the solver's tensors still in use.
    """

    def __init__(self, solver: Solver, like: Tensor, count: int = 3) -> None:
        self.buffers = [
            solver.workspace(f"iterate{i}", tuple(like.shape), like.dtype, like.device) for i in range(count)
        ]

    def take(self, tracker: BestIterateTracker, *in_use: Tensor) -> Tensor:
        busy = {tracker.z.data_ptr(), *(t.data_ptr() for t in in_use)}
        for buffer in self.buffers:
            if buffer.data_ptr() not in busy:
                return buffer
        raise RuntimeError("IterateBuffers: every buffer is in use; create it with a larger count")


def restart_where(z_next: Tensor, finite: Tensor, tracker: BestIterateTracker) -> Tensor:
    """Replace, in place, the samples of ``z_next`` where ``finite`` (``(B,)`` bool, known to the solver)
    is false by their best iterate so far; without a host read unless the tracker may branch."""
    if tracker.may_branch and bool(finite.all()):
        return z_next
    return torch.where(finite.unsqueeze(1), z_next, tracker.z.to(z_next.dtype), out=z_next)


def sanitize(t: Tensor, finite: Tensor, tracker: BestIterateTracker) -> None:
    """Zero, in place, the non-finite entries of the samples of ``t`` where ``finite`` (``(B,)``) is false,
    so that they cannot poison products with other vectors; a no-op on CPU when every sample is finite."""
    if tracker.may_branch and bool(finite.all()):
        return
    torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)


def restart_nonfinite(z_next: Tensor, tracker: BestIterateTracker) -> Tensor:
    """Replace samples whose next iterate is not finite by their best iterate so far."""
    # On CPU, first a cheap screen: a finite per-sample sum implies finite entries, and in the common case
    # the iterate is returned as it is (no copy). A non-finite sum (a non-finite entry, or an overflowing sum
    # of huge ones) falls through to the exact per-entry test.
    if tracker.may_branch and bool(torch.isfinite(z_next.sum(dim=1)).all()):
        return z_next
    finite = torch.isfinite(z_next).all(dim=1, keepdim=True)
    return torch.where(finite, z_next, tracker.z.to(z_next.dtype))
