"""``CompiledCell``: the weight-tied cell ``f`` compiled with ``torch.compile`` once per layer and input shape.

The models build ``f`` as a new closure at every forward (``lambda z: cell(z, injection)``). Compiling that
closure would trace it anew each step; instead one small function ``call(fn, z) = fn(z)`` is compiled per
layer and receives the closure as an argument. Dynamo then traces *into* ``fn`` and guards on its code and on
what it closes over (the cell module, the shapes and dtypes of the injection tensors), not on the closure
object, so a training step reuses the graphs of the previous one. Shapes are static (``dynamic=False``): a new
input shape (e.g. a smaller last batch) compiles once more, and so does each grad mode (the solve runs under
``no_grad``, the estimators' calls record a graph) and train/eval mode.

Each evaluation of ``f`` inside the solve and inside every estimator's backward goes through the compiled
graphs. The Jacobian-regularisation term (Bai et al. 2021, eq. 6) needs a double backward, which compiled
graphs do not have; it is compiled as one function ``||eps^T J||^2`` built with ``torch.func.vjp``, whose own
backward is an ordinary first-order one.

The first evaluation of each forward runs eagerly: it draws the forward's variational-dropout masks (Python
state that compiled graphs read but never draw, see ``VariationalDropout``). Parametrised weights (weight norm)
are recomputed inside each compiled call instead of being read from ``norm_cache``, which would give each
cache state a graph of its own.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor

from .solvers.base import FixedPointFn, Solver, SolverResult, check_solve_args
from .solvers.stepped import State, result_of


def _call(fn: FixedPointFn, z: Tensor) -> Tensor:
    return fn(z)


def _solver_step(solver: Solver, fn: FixedPointFn, state: State, tol: float, stop_mode: str) -> None:
    solver.step(fn, state, tol, stop_mode)


def _jacobian_frobenius(fn: FixedPointFn, z: Tensor, eps: Tensor) -> Tensor:
    """``||eps^T dF/dz||^2 / (B D)`` with one probe ``eps`` (the estimate of ``jacobian_frobenius_loss``)."""
    _, vjp = torch.func.vjp(fn, z)
    (v,) = vjp(eps)
    batch, dim = z.shape[0], z[0].numel()
    return v.to(torch.promote_types(v.dtype, torch.float32)).pow(2).sum() / (batch * dim)


def _own_copy(function: types.FunctionType) -> types.FunctionType:
    """``function`` with a code object of its own: dynamo keeps its compiled graphs (and its recompile limit)
    per code object, so every layer gets its own cache instead of sharing one across all models."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__)


class CompiledCell:
    """The compiled evaluation of ``f`` for one ``DEQFixedPoint``.

    Args:
        compile_kwargs: passed to ``torch.compile`` (``mode``, ``backend``, ...); ``dynamic`` is ``False``
            unless given.
    """

    def __init__(self, compile_kwargs: dict[str, Any] | None = None) -> None:
        options = {"dynamic": False, **(compile_kwargs or {})}
        self.compile_kwargs = options
        self._call = torch.compile(_own_copy(_call), **options)
        self._jacobian = torch.compile(_own_copy(_jacobian_frobenius), **options)

    def wrap(self, fn: FixedPointFn) -> FixedPointFn:
        """``fn`` for one forward: its first call eager (it draws the dropout masks), every later one compiled."""
        compiled = self._call
        calls = 0

        def f(z: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return fn(z) if calls == 1 else compiled(fn, z)

        return f

    def jacobian_loss(self, fn: FixedPointFn, z: Tensor) -> Tensor:
        """``jacobian_frobenius_loss(fn(z), z)`` (one probe, drawn here as that function draws it), compiled."""
        eps = torch.randn_like(z)
        return self._jacobian(fn, z.detach(), eps)

    def __repr__(self) -> str:
        return f"CompiledCell({self.compile_kwargs})"


class CompiledSolve:
    """The solve of one ``DEQFixedPoint`` as a Python loop over one compiled solver step (``compile_solve``).

    Each iteration calls ``solver.step(fn, state, tol, stop_mode)`` compiled as one graph (``fullgraph``): the
    evaluation of ``f``, the solver's update, the residuals, the per-sample best iterate and the device-side
    stop flag, on a fixed-shape state updated in place (``hf_deq.deq.solvers.stepped``). The iteration count
    is a tensor in the state and ``max_iter`` stays in the Python loop, so one graph serves every iteration,
    every budget (training and eval) and, with ``dynamic=True`` (the default here), every batch size. The
    host reads the stop flag every ``solver.check_every`` iterations (``None``: never), and between reads does
    nothing but launch the step: no host synchronisation.

    The state's buffers are kept for the next solve of the same shapes (stable addresses); on CUDA they are
    marked static and the step compiles with ``mode="reduce-overhead"`` (CUDA graphs) unless ``compile_kwargs``
    names a mode. Solvers without a fixed-shape step (``Solver.has_step`` false) are solved by their eager
    ``solve``.

    Args:
        compile_kwargs: passed to ``torch.compile``; ``dynamic`` is ``True`` and ``fullgraph`` ``True`` unless
            given.
    """

    def __init__(self, compile_kwargs: dict[str, Any] | None = None) -> None:
        self.compile_kwargs = {"dynamic": True, "fullgraph": True, **(compile_kwargs or {})}
        self._steps: dict[str, Any] = {}
        self._kept: dict[tuple, State] = {}

    def step_function(self, device: torch.device) -> Any:
        """The compiled step for tensors on ``device`` (one per device type: CUDA graphs on CUDA)."""
        step = self._steps.get(device.type)
        if step is None:
            options = dict(self.compile_kwargs)
            if device.type == "cuda" and "mode" not in options and "options" not in options:
                options["mode"] = "reduce-overhead"
            step = self._steps[device.type] = torch.compile(_own_copy(_solver_step), **options)
        return step

    def state(self, solver: Solver, z0: Tensor, max_iter: int | None = None) -> State:
        """``solver.init_state(z0)``, written in place into the buffers of the previous solve of the same shapes
        if any (refilling them costs far less than new ones: a Broyden history of 20 MiB took 19 ms to
        allocate, zero and copy, most of a step)."""
        # The shapes and dtypes alone, nothing allocated.
        layout = solver.init_state(z0.to("meta"), max_iter=max_iter)
        key = (type(solver), z0.device, tuple((k, tuple(v.shape), v.dtype) for k, v in layout.items()))
        kept = self._kept.get(key)
        if kept is not None:
            return solver.init_state(z0, out=kept, max_iter=max_iter)
        fresh = solver.init_state(z0, max_iter=max_iter)
        if len(self._kept) >= 4:  # a few shapes (e.g. the training batch and a smaller last one)
            self._kept.pop(next(iter(self._kept)))
        width = z0.shape[1]
        for tensor in fresh.values():
            # Only the batch and the state width are dynamic: the solver's own dimensions (history
            # slots) are constants of the step, never to be confused with a batch of the same size.
            for dim in range(1, tensor.dim()):
                if not (dim == tensor.dim() - 1 and tensor.shape[dim] == width):
                    torch._dynamo.mark_static(tensor, dim)
            if z0.device.type == "cuda":
                torch._dynamo.mark_static_address(tensor, guard=False)
        self._kept[key] = fresh
        return fresh

    def solve(
        self,
        solver: Solver,
        fn: FixedPointFn,
        z0: Tensor,
        *,
        max_iter: int,
        tol: float,
        stop_mode: str = "rel",
        eager_first: bool = False,
        budget: int | None = None,
    ) -> SolverResult:
        """``solver.solve(fn, z0, ...)`` (the same result, ``nfev`` aside as with ``check_every``) by the
        compiled step. ``eager_first`` runs the first step eagerly: it draws the forward's dropout masks
        (``VariationalDropout``), which compiled graphs read but never draw. ``budget``: the largest
        ``max_iter`` of the solves this one shares its graph with (e.g. a layer's training and eval budgets):
        the state is sized for it (``Solver.init_state``), one shape for all of them."""
        check_solve_args(max_iter, tol, stop_mode)
        if not solver.has_step:
            return solver.solve(fn, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode)
        if z0.dim() != 2:
            raise ValueError(f"z0 must have shape (batch, dim), got shape {tuple(z0.shape)}")
        tol = float(tol)
        check_every = solver.check_every
        step = self.step_function(z0.device)
        with torch.no_grad():
            state = self.state(solver, z0, None if budget is None else max(budget, max_iter))
            nfev = 0
            while nfev < max_iter:
                if eager_first and nfev == 0:
                    solver.step(fn, state, tol, stop_mode)
                else:
                    step(solver, fn, state, tol, stop_mode)
                nfev += 1
                if check_every and nfev % check_every == 0 and nfev < max_iter and not bool(state["running"]):
                    break
            return result_of(state, nfev, tol, stop_mode)

    def __getstate__(self) -> dict:
        """Copied and pickled without the kept state buffers (a copy starts with none)."""
        return {**self.__dict__, "_kept": {}}

    def __repr__(self) -> str:
        return f"CompiledSolve({self.compile_kwargs})"
