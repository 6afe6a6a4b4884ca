"""What every hf_deq ``PreTrainedModel`` shares: changing the solver and the estimator at run time."""

from __future__ import annotations

import copy
from typing import Any

from .configuration_deq import DEQConfig
from .deq import DEQFixedPoint
from .deq.core import GRAD_CONFIG_FIELDS


class DEQModelMixin:
    """Mixin for ``PreTrainedModel`` subclasses holding ``DEQFixedPoint`` layers built with ``from_config``."""

    config: DEQConfig

    def deq_layers(self) -> list[DEQFixedPoint]:
        return [m for m in self.modules() if isinstance(m, DEQFixedPoint)]

    def _apply_deq_fields(self, fields: dict[str, Any]) -> None:
        """Validate ``fields`` on a copy of the config, then write them and rebuild every DEQ layer."""
        trial = copy.deepcopy(self.config)
        for key, value in fields.items():
            if not hasattr(trial, key):
                raise TypeError(f"{type(self.config).__name__} has no field {key!r}")
            setattr(trial, key, value)
        trial.validate_deq_fields()
        DEQFixedPoint.from_config(trial)  # the engine's own checks (e.g. unknown solver hyperparameters)
        for key, value in fields.items():
            setattr(self.config, key, value)
        for layer in self.deq_layers():
            layer.reconfigure(self.config)

    def set_grad_estimator(self, name: str, **fields: Any) -> None:
        """Switch the gradient estimator, e.g. ``set_grad_estimator("npg", grad_steps=8, grad_damping=0.5)``
        or ``set_grad_estimator("implicit", grad_max_iter=40)``; short names (``steps``, ``damping``,
        ``solver``, ``max_iter``, ``tol``) are accepted too. Updates ``model.config``."""
        updates: dict[str, Any] = {"grad_estimator": name}
        for key, value in fields.items():
            updates[GRAD_CONFIG_FIELDS.get(key, key)] = value
        bad = sorted(set(updates) - set(DEQConfig.GRAD_FIELDS))
        if bad:
            raise TypeError(f"set_grad_estimator got {bad}; it takes {list(DEQConfig.GRAD_FIELDS[1:])}")
        self._apply_deq_fields(updates)

    def set_solver(self, name: str, **fields: Any) -> None:
        """Switch the forward solver, e.g. ``set_solver("broyden", solver_max_iter=40, memory=10)``: keys
        named like config fields (``solver_max_iter``, ``solver_tol``, ...) set those fields, any other key
        is a hyperparameter of the solver (``solver_kwargs``). Updates ``model.config``."""
        updates: dict[str, Any] = {"solver": name}
        hyper = {k: v for k, v in fields.items() if k not in DEQConfig.SOLVER_FIELDS}
        updates.update({k: v for k, v in fields.items() if k in DEQConfig.SOLVER_FIELDS})
        if hyper or "solver_kwargs" not in updates:
            updates["solver_kwargs"] = {**(updates.get("solver_kwargs") or {}), **hyper} or None
        self._apply_deq_fields(updates)


__all__ = ["DEQModelMixin"]
