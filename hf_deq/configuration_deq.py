"""The DEQ fields every hf_deq model config shares (DESIGN section 3), with their validation."""

from __future__ import annotations

import math
from typing import Any

from transformers import PreTrainedConfig

from .deq import available_grad_estimators, available_solvers, get_solver, normalize_name
from .deq.core import FAILURE_MODES, GRAD_CONFIG_FIELDS
from .deq.solvers import SOLVERS
from .deq.solvers.base import STOP_MODES


class DEQConfigError(ValueError):
    """A config field holds a value outside its allowed range or choices."""

    def __init__(self, config_name: str, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{config_name}.{field}={value!r} is invalid: expected {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


class DEQConfig(PreTrainedConfig):
    """Base config of DEQ models: the solver and the gradient estimator are plain fields.

    Args:
        solver: forward solver, one of ``available_solvers()`` (``"anderson"``, ``"broyden"``, ``"fixed_point"``).
        solver_kwargs: hyperparameters of the solver, e.g. ``{"memory": 5}``.
        solver_max_iter: forward budget in training.
        solver_eval_max_iter: forward budget in eval mode (``None``: ``solver_max_iter``).
        solver_tol: stop when every sample's residual is below this.
        solver_stop_mode: ``"rel"`` (``||f(z)-z|| / ||f(z)||``) or ``"abs"``.
        solver_on_failure: ``"warn"`` (once), ``"raise"`` or ``"ignore"`` when the solver misses ``solver_tol``.
        grad_estimator: ``"implicit"``, ``"upg"``, ``"npg"``, ``"one_step"``, ``"unrolled"`` or a registered name.
        grad_steps: ``k`` of UPG/NPG, unrolled steps of ``"unrolled"``.
        grad_damping: ``lambda`` of UPG/NPG, in ``(0, 1]``.
        grad_solver: backward solver of ``"implicit"`` (``"gmres"`` by default: the backward problem is linear).
        grad_max_iter: backward budget of ``"implicit"`` (``J^T v`` products).
        grad_tol: backward tolerance of ``"implicit"``.
        jacobian_reg_weight: weight of the Jacobian regularisation term added to the loss (0 = off).
        compile_cell: evaluate the cell ``f`` through ``torch.compile`` in the solve and in the backward
            (compiled once per input shape; ``DEQFixedPoint(compile_cell=True)``).
    """

    model_type = ""

    solver: str = "anderson"
    solver_kwargs: dict[str, Any] | None = None
    solver_max_iter: int = 30
    solver_eval_max_iter: int | None = None
    solver_tol: float = 1e-3
    solver_stop_mode: str = "rel"
    solver_on_failure: str = "warn"
    compile_cell: bool = False
    grad_estimator: str = "upg"
    grad_steps: int = 5
    grad_damping: float = 0.5
    grad_solver: str = "gmres"
    grad_max_iter: int = 30
    grad_tol: float = 1e-6
    jacobian_reg_weight: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_deq_fields()

    # Field names of the solver / estimator groups, for set_solver / set_grad_estimator.
    SOLVER_FIELDS = (
        "solver",
        "solver_kwargs",
        "solver_max_iter",
        "solver_eval_max_iter",
        "solver_tol",
        "solver_stop_mode",
        "solver_on_failure",
        "compile_cell",
    )
    GRAD_FIELDS = ("grad_estimator", *GRAD_CONFIG_FIELDS.values())

    def _error(self, field: str, allowed: str) -> DEQConfigError:
        return DEQConfigError(type(self).__name__, field, getattr(self, field), allowed)

    def validate_deq_fields(self) -> None:
        """Raise ``DEQConfigError`` (a ``ValueError``) naming the first invalid DEQ field."""
        forward_solvers = [n for n in available_solvers() if not SOLVERS.get_class(n).affine_only]
        if not isinstance(self.solver, str) or normalize_name(self.solver) not in forward_solvers:
            raise self._error("solver", f"one of {forward_solvers}")
        if self.solver_kwargs is not None and not isinstance(self.solver_kwargs, dict):
            raise self._error("solver_kwargs", "a dict of solver hyperparameters or None")
        if self.solver_kwargs:
            try:  # the solver's own checks (unknown hyperparameters, out-of-range values), at construction
                get_solver(self.solver, **self.solver_kwargs)
            except (TypeError, ValueError) as err:
                raise self._error(
                    "solver_kwargs", f"hyperparameters that solver {self.solver!r} accepts ({err})"
                ) from err
        if not _is_int(self.solver_max_iter) or self.solver_max_iter < 1:
            raise self._error("solver_max_iter", "an integer >= 1")
        if self.solver_eval_max_iter is not None and (
            not _is_int(self.solver_eval_max_iter) or self.solver_eval_max_iter < 1
        ):
            raise self._error("solver_eval_max_iter", "an integer >= 1 or None")
        if not _is_finite_number(self.solver_tol) or not self.solver_tol >= 0:
            raise self._error("solver_tol", "a finite number >= 0")
        if self.solver_stop_mode not in STOP_MODES:
            raise self._error("solver_stop_mode", f"one of {list(STOP_MODES)}")
        if self.solver_on_failure not in FAILURE_MODES:
            raise self._error("solver_on_failure", f"one of {list(FAILURE_MODES)}")
        if not isinstance(self.compile_cell, bool):
            raise self._error("compile_cell", "True or False")
        estimators = available_grad_estimators()
        if not isinstance(self.grad_estimator, str) or normalize_name(self.grad_estimator) not in estimators:
            raise self._error("grad_estimator", f"one of {estimators}")
        if not _is_int(self.grad_steps) or self.grad_steps < 1:
            raise self._error("grad_steps", "an integer >= 1")
        if not _is_number(self.grad_damping) or not 0 < self.grad_damping <= 1:
            raise self._error("grad_damping", "a number in (0, 1]")
        if (
            not isinstance(self.grad_solver, str)
            or normalize_name(self.grad_solver) not in available_solvers()
        ):
            raise self._error("grad_solver", f"one of {available_solvers()}")
        if not _is_int(self.grad_max_iter) or self.grad_max_iter < 1:
            raise self._error("grad_max_iter", "an integer >= 1")
        if not _is_finite_number(self.grad_tol) or not self.grad_tol >= 0:
            raise self._error("grad_tol", "a finite number >= 0")
        if not _is_finite_number(self.jacobian_reg_weight) or not self.jacobian_reg_weight >= 0:
            raise self._error("jacobian_reg_weight", "a finite number >= 0")


__all__ = ["DEQConfig", "DEQConfigError"]
