"""Gradient estimators and their registry."""

from __future__ import annotations

from ..registry import Registry
from .base import GradientEstimator
from .implicit import ImplicitDifferentiation
from .phantom import NeumannPhantomGradient, OneStepGradient, UnrolledPhantomGradient
from .unrolled import UnrolledBackprop

GRAD_ESTIMATORS: Registry[GradientEstimator] = Registry("gradient estimator")
GRAD_ESTIMATORS.register("implicit", ImplicitDifferentiation)
GRAD_ESTIMATORS.register("upg", UnrolledPhantomGradient)
GRAD_ESTIMATORS.register("npg", NeumannPhantomGradient)
GRAD_ESTIMATORS.register("one_step", OneStepGradient)
GRAD_ESTIMATORS.register("unrolled", UnrolledBackprop)


def register_grad_estimator(
    name: str, cls: type[GradientEstimator], *, overwrite: bool = False
) -> type[GradientEstimator]:
    """Make ``cls`` available as ``get_grad_estimator(name)`` and as a config ``grad_estimator`` value. A ``name``
    taken by another class raises ``ValueError`` unless ``overwrite``."""
    if not (isinstance(cls, type) and issubclass(cls, GradientEstimator)):
        raise TypeError(f"register_grad_estimator needs a subclass of GradientEstimator, got {cls!r}")
    return GRAD_ESTIMATORS.register(name, cls, overwrite=overwrite)


def available_grad_estimators() -> list[str]:
    """The registered gradient-estimator names, sorted (read at call time: a newly registered one is among
    them)."""
    return GRAD_ESTIMATORS.names()


def get_grad_estimator(name: str | GradientEstimator, **hyperparameters) -> GradientEstimator:
    """An estimator by name: ``get_grad_estimator("upg", steps=5, damping=0.5)``,
    ``get_grad_estimator("implicit", solver="anderson", max_iter=30, tol=1e-6)``."""
    if isinstance(name, GradientEstimator):
        if hyperparameters:
            raise TypeError("hyperparameters can only be given with an estimator name, not with an instance")
        return name
    return GRAD_ESTIMATORS.create(name, **hyperparameters)


__all__ = [
    "GradientEstimator",
    "ImplicitDifferentiation",
    "NeumannPhantomGradient",
    "OneStepGradient",
    "UnrolledBackprop",
    "UnrolledPhantomGradient",
    "available_grad_estimators",
    "get_grad_estimator",
    "register_grad_estimator",
]
