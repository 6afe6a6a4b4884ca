"""``DEQFixedPoint``: solve without autograd, then let a gradient estimator attach the gradient."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .compile import CompiledCell, CompiledSolve
from .contractivity import spectral_radius
from .dropout import new_dropout_masks
from .grad import GRAD_ESTIMATORS, GradientEstimator, get_grad_estimator
from .norm import norm_cache
from .registry import accepted_arguments
from .regularization import jacobian_frobenius_loss
from .solvers import Solver, SolverResult, get_solver
from .solvers.base import FixedPointFn, check_solve_args, residual_norms

FAILURE_MODES = ("warn", "raise", "ignore")


class DEQConvergenceError(RuntimeError):
    """Raised when the solver fails (``failed_samples``) and ``on_failure="raise"``."""


def grad_estimator_from_hyperparameters(
    name: str | GradientEstimator, **hyperparameters: Any
) -> GradientEstimator:
    """Build the estimator registered as ``name`` (an instance is returned as it is) from the hyperparameters it
    takes among ``hyperparameters`` (``steps``, ``damping``, ``solver``, ...): one set of values serves every
    estimator, a registered one included."""
    if isinstance(name, GradientEstimator):
        return name
    accepted = accepted_arguments(GRAD_ESTIMATORS.get_class(name))
    return get_grad_estimator(name, **{k: v for k, v in hyperparameters.items() if k in accepted})


#: A sample that misses ``tol`` fails outright when its residual is above this multiple of ``tol`` ...
FAILURE_TOL_FACTOR = 1000.0
#: ... or, with ``stop_mode="rel"``, above this relative residual (the zero initial state has 1): ``f(z) - z`` half
#: as large as ``f(z)`` is no fixed point at any tolerance (a map that grows without bound ends here, ~(a-1)/a) ...
NO_PROGRESS_REL_RESIDUAL = 0.5
#: ... or when it is above this multiple of ``tol`` and the solve stalled (see ``failed_samples``).
STALL_TOL_FACTOR = 100.0
#: Power-iteration steps of the spectral radius measured when a solve failed (``DEQFixedPoint._failure_advice``).
FAILURE_RADIUS_ITERS = 8


def failed_samples(result: SolverResult) -> Tensor:
    """``(B,)`` mask of the samples whose solve failed, as opposed to a solve that merely ran out of budget.

    A sample fails when it missed ``tol`` and its (best) residual is
    - not finite (no finite iterate), or
    - above ``FAILURE_TOL_FACTOR * tol`` (far from the tolerance; with ``stop_mode="rel"`` also above
      ``NO_PROGRESS_REL_RESIDUAL``), or
    - above ``STALL_TOL_FACTOR * tol`` while its best iterate was reached within the first half of the
      ``nfev`` evaluations (``2 * nstep <= nfev``): the second half of the budget made no progress, the solve
      stalled, oscillated or diverged.
    A sample below those bounds, or still improving when the budget ran out (the usual case of a small training
    budget, e.g. 8 Broyden steps with phantom gradients), has not failed: its residual is reported in the
    result, and nothing is warned.
    """
    residual = result.residual
    far = FAILURE_TOL_FACTOR * result.tol
    if result.stop_mode == "rel":
        far = min(far, NO_PROGRESS_REL_RESIDUAL)
    stalled = (2 * result.nstep <= result.nfev) & (residual > STALL_TOL_FACTOR * result.tol)
    return ~result.converged & (~torch.isfinite(residual) | (residual > far) | stalled)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of a warning issued here that points at the first frame outside torch, hf_deq and the
    libraries that call models (transformers, accelerate, peft): the user's code (``skip_file_prefixes`` of
    Python 3.12, by hand). Runs once per warning, never in the solver loop."""
    import os
    import sys

    names = ("torch", "hf_deq", "transformers", "accelerate", "peft")
    prefixes = tuple(
        os.path.dirname(module.__file__) + os.sep
        for module in map(sys.modules.get, names)
        if module is not None and getattr(module, "__file__", None)
    )
    frame, level = sys._getframe(1), 1  # the caller of this function is level 1 of its warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        frame, level = frame.f_back, level + 1
    return level


class DEQFixedPoint(nn.Module):
    """The equilibrium layer ``z* = f(z*)`` (Bai et al. 2019; trained with the gradients of Geng et al. 2021,
    arXiv 2111.05177: the implicit one, eq. 3, or the phantom gradients, eqs. 9-10).

    ``forward(fn, z0)`` returns ``(z, SolverResult)``. With autograd on, the solve runs without a graph and
    the gradient estimator attaches the gradient to ``z*``; otherwise only the solve runs. In eval mode
    ``eval_max_iter`` (default ``max_iter``) bounds the solve. A solve that misses ``tol`` is reported per
    sample in the result; one that fails (``failed_samples``: diverged, stalled or far above ``tol``) is, by
    ``on_failure``, warned about once, raised, or ignored.

    Args:
        solver: forward solver, a name from ``available_solvers()`` or a ``Solver``.
        grad_estimator: a name from ``available_grad_estimators()`` or a ``GradientEstimator``.
        max_iter: forward budget (solver iterations) in training mode.
        tol: forward stopping tolerance.
        stop_mode: stop rule, ``"rel"`` or ``"abs"`` residual.
        eval_max_iter: budget in eval mode; ``None`` means ``max_iter``.
        solver_kwargs: hyperparameters of a solver given by name.
        jacobian_reg_weight: when > 0, training forwards also compute ``result.jacobian_loss``.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"``.
        compile_cell: evaluate ``f`` through ``torch.compile`` (``CompiledCell``) in the solve, in every
            estimator's backward and in the Jacobian term; compiled once per input shape.
        compile_solve: run the solve as one compiled solver step per iteration (``CompiledSolve``: ``f``, the
            solver's update, the residuals, the best iterate and the stop test in one graph); implies
            ``compile_cell`` for the estimators' backward and the Jacobian term.
        compile_kwargs: passed to ``torch.compile`` when ``compile_cell`` or ``compile_solve`` (e.g.
            ``{"mode": "max-autotune"}``).
    """

    def __init__(
        self,
        solver: str | Solver = "anderson",
        grad_estimator: str | GradientEstimator = "implicit",
        max_iter: int = 30,
        tol: float = 1e-3,
        stop_mode: str = "rel",
        eval_max_iter: int | None = None,
        *,
        solver_kwargs: dict[str, Any] | None = None,
        jacobian_reg_weight: float = 0.0,
        on_failure: str = "warn",
        compile_cell: bool = False,
        compile_solve: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_solve_args(max_iter, tol, stop_mode)
        if eval_max_iter is not None:
            check_solve_args(eval_max_iter, tol, stop_mode)
        if on_failure not in FAILURE_MODES:
            raise ValueError(f"on_failure must be one of {list(FAILURE_MODES)}, got {on_failure!r}")
        if (
            isinstance(jacobian_reg_weight, bool)
            or not isinstance(jacobian_reg_weight, (int, float))
            or not (jacobian_reg_weight >= 0)
        ):
            raise ValueError(f"jacobian_reg_weight must be a number >= 0, got {jacobian_reg_weight!r}")
        if not isinstance(compile_cell, bool):
            raise ValueError(f"compile_cell must be True or False, got {compile_cell!r}")
        if not isinstance(compile_solve, bool):
            raise ValueError(f"compile_solve must be True or False, got {compile_solve!r}")
        if compile_kwargs is not None and not isinstance(compile_kwargs, dict):
            raise ValueError(
                f"compile_kwargs must be a dict of torch.compile arguments or None, got {compile_kwargs!r}"
            )
        self.solver = solver if isinstance(solver, Solver) else get_solver(solver, **(solver_kwargs or {}))
        if self.solver.affine_only:
            raise ValueError(
                f"solver {type(self.solver).__name__} only solves affine maps (it serves the implicit backward as "
                "grad_solver); choose a forward solver such as 'anderson', 'broyden' or 'fixed_point'"
            )
        self.grad_estimator = get_grad_estimator(grad_estimator)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.stop_mode = stop_mode
        self.eval_max_iter = eval_max_iter
        self.jacobian_reg_weight = float(jacobian_reg_weight)
        self.on_failure = on_failure
        self._warned = False
        self.compile_kwargs = compile_kwargs
        # Under compile_solve the cell's graphs are dynamic too: a smaller last batch compiles nothing new.
        cell_kwargs = {"dynamic": True, **(compile_kwargs or {})} if compile_solve else compile_kwargs
        self.compiled_cell = CompiledCell(cell_kwargs) if compile_cell or compile_solve else None
        self.compiled_solve = CompiledSolve(compile_kwargs) if compile_solve else None

    @property
    def compile_cell(self) -> bool:
        """Whether ``f`` is compiled (``compile_cell`` or ``compile_solve``)."""
        return self.compiled_cell is not None

    @property
    def compile_solve(self) -> bool:
        return self.compiled_solve is not None

    def reconfigure(self, **kwargs: Any) -> None:
        """Take the solver, estimator, budgets and compile flags of ``DEQFixedPoint(**kwargs)`` (built, so
        checked, before anything changes); ``compile_kwargs`` stay the layer's own."""
        fresh = type(self)(**kwargs, compile_kwargs=self.compile_kwargs)
        for name in (
            "solver",
            "grad_estimator",
            "max_iter",
            "tol",
            "stop_mode",
            "eval_max_iter",
            "jacobian_reg_weight",
            "on_failure",
        ):
            setattr(self, name, getattr(fresh, name))
        if fresh.compile_cell != self.compile_cell:  # an unchanged flag keeps the graphs compiled so far
            self.compiled_cell = fresh.compiled_cell
        if fresh.compile_solve != self.compile_solve:
            self.compiled_solve = fresh.compiled_solve

    @contextlib.contextmanager
    def budget_override(
        self, *, max_iter: int | None = None, eval_max_iter: int | None = None, tol: float | None = None
    ) -> Iterator[None]:
        """Solve with these budgets / tolerance inside the ``with`` block only (``None``: keep the layer's own):
        a per-call knob that leaves the layer's settings as they were on exit, even after an error. Checked here,
        once, as ``solve`` checks its arguments (``ValueError``); the solver loop is unchanged."""
        overrides = {
            name: value
            for name, value in (("max_iter", max_iter), ("eval_max_iter", eval_max_iter), ("tol", tol))
            if value is not None
        }
        check_solve_args(
            overrides.get("max_iter", self.max_iter), overrides.get("tol", self.tol), self.stop_mode
        )
        if eval_max_iter is not None:
            check_solve_args(eval_max_iter, overrides.get("tol", self.tol), self.stop_mode)
        if "tol" in overrides:
            overrides["tol"] = float(overrides["tol"])
        saved = {name: getattr(self, name) for name in overrides}
        for name, value in overrides.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def forward(self, fn: FixedPointFn, z0: Tensor) -> tuple[Tensor, SolverResult]:
        with new_dropout_masks():  # one mask per VariationalDropout for this call (keyed per call)
            return self._solve_and_attach(fn, z0)

    def _solve_and_attach(self, fn: FixedPointFn, z0: Tensor) -> tuple[Tensor, SolverResult]:
        grad_needed = torch.is_grad_enabled()
        estimator = self.grad_estimator
        cell = fn if self.compiled_cell is None else self.compiled_cell.wrap(fn)
        cache = norm_cache if self.compiled_cell is None else contextlib.nullcontext
        if grad_needed and self.training and not estimator.needs_fixed_point:
            with cache():
                z = estimator.attach(cell, z0)
            result = self._stats_of(cell, z.detach(), getattr(estimator, "steps", 0), cache)
        else:
            max_iter = self.max_iter if self.training or self.eval_max_iter is None else self.eval_max_iter
            if self.compiled_solve is not None and self.solver.has_step:
                result = self.compiled_solve.solve(
                    self.solver,
                    fn,
                    z0,
                    max_iter=max_iter,
                    tol=self.tol,
                    stop_mode=self.stop_mode,
                    eager_first=self.training,
                    budget=max(self.max_iter, self.eval_max_iter or 0),
                )
            else:
                with cache():
                    result = self.solver.solve(
                        cell, z0, max_iter=max_iter, tol=self.tol, stop_mode=self.stop_mode
                    )
            self._check_failure(result, fn)
            z = result.z.to(z0.dtype)
            if grad_needed:
                with cache():
                    z = estimator.attach(cell, z)
        if grad_needed and self.training and self.jacobian_reg_weight > 0:
            if self.compiled_cell is not None:
                jacobian_loss = self.compiled_cell.jacobian_loss(fn, z.detach())
            else:
                with norm_cache():
                    z_in = z.detach().requires_grad_()
                    jacobian_loss = jacobian_frobenius_loss(fn(z_in), z_in)
            result = result.replace(jacobian_loss=jacobian_loss)
        return z, result

    def _stats_of(self, fn: FixedPointFn, z: Tensor, nstep: int, cache=norm_cache) -> SolverResult:
        """Residual of a state reached without the solver (unrolled warm-up)."""
        with torch.no_grad(), cache():
            abs_res, rel_res = residual_norms(fn(z), z)
        current = rel_res if self.stop_mode == "rel" else abs_res
        return SolverResult(
            z=z,
            nstep=torch.full_like(abs_res, nstep, dtype=torch.long),
            abs_residual=abs_res,
            rel_residual=rel_res,
            converged=current <= self.tol,
            nfev=nstep + 1,
            stop_mode=self.stop_mode,
            tol=self.tol,
        )

    def _check_failure(self, result: SolverResult, fn: FixedPointFn) -> None:
        """Warn once, raise or ignore (``on_failure``) when ``failed_samples(result)`` holds any sample; the
        message says what the spectral radius of ``f`` at the failing samples suggests (``_failure_advice``)."""
        if self.on_failure == "ignore" or bool(result.converged.all()):
            return
        failed = failed_samples(result)
        if not bool(failed.any()):
            return  # missed tol within the budget, but still converging: reported in the result only
        if self.on_failure == "warn" and self._warned:
            return  # warned already: the measurement would only cost time
        bad = int(failed.sum())
        worst = float(result.residual[failed].max())
        message = (
            f"DEQ solver {type(self.solver).__name__} did not reach {self.stop_mode} residual {self.tol:g} for "
            f"{bad}/{result.converged.numel()} samples: the solve failed (worst residual {worst:.3g}; not "
            f"finite, above {FAILURE_TOL_FACTOR:g}x tol, or stalled above {STALL_TOL_FACTOR:g}x tol, see "
            f"hf_deq.deq.failed_samples); the best iterate was kept. {self._failure_advice(result, fn, failed, worst)}"
        )
        if self.on_failure == "raise":
            raise DEQConvergenceError(message)
        self._warned = True
        warnings.warn(message + " (warned once per layer)", RuntimeWarning, stacklevel=_caller_stacklevel())

    def _failure_advice(self, result: SolverResult, fn: FixedPointFn, failed: Tensor, worst: float) -> str:
        """What the largest spectral radius of ``df/dz`` over the failed samples, at their best iterate, suggests
        (``spectral_radius``, ``FAILURE_RADIUS_ITERS`` products through one eager call of ``f``; DEQ paper sec. 3:
        the solve converges where ``rho(df/dz) < 1``): ``>= 1``, ``f`` does not contract there (Jacobian
        regularisation, a smaller learning rate); ``< 1``, it contracts, too slowly for the budget (a larger
        budget, Anderson/Broyden). Runs only when a solve failed, never in the solver loop."""
        budget = "max_iter (config solver_max_iter)"
        if not self.training and self.eval_max_iter is not None:
            budget = "eval_max_iter (config solver_eval_max_iter)"
        try:
            with norm_cache():
                radius = spectral_radius(
                    fn, result.z, iters=FAILURE_RADIUS_ITERS, generator=torch.Generator().manual_seed(0)
                )
            rho = float(radius.to(failed.device)[failed].max())
        except RuntimeError as err:  # no differentiable path through f, inference tensors, ...
            cause = " ".join(str(err).split())[:160]
            return (
                f"The spectral radius of df/dz could not be measured ({cause}). Raise {budget}, use another "
                "solver, or regularise the model (Jacobian regularisation, jacobian_reg_weight)."
            )
        measured = f"spectral radius of df/dz at the failed samples' best iterate ~{rho:.3g}"
        if not rho < 1.0:
            return (
                f"Measured {measured} (>= 1): f does not contract there (fixed-point iteration diverges, "
                "Anderson/Broyden may not converge); add Jacobian regularisation (jacobian_reg_weight) or lower "
                "the learning rate."
            )
        more = math.log(self.tol / worst) / math.log(rho) if worst > self.tol and rho > 0 else 1.0
        return (
            f"Measured {measured} (< 1): f contracts there, but slowly (fixed-point iteration would need about "
            f"{math.ceil(more)} more steps); raise {budget} or use Anderson/Broyden."
        )

    def extra_repr(self) -> str:
        return (
            f"solver={self.solver!r}, grad_estimator={self.grad_estimator!r}, max_iter={self.max_iter}, "
            f"tol={self.tol:g}, stop_mode={self.stop_mode!r}, eval_max_iter={self.eval_max_iter}"
            + (", compile_cell=True" if self.compile_cell else "")
            + (", compile_solve=True" if self.compile_solve else "")
        )
