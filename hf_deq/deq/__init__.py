"""The DEQ engine: fixed-point solvers, gradient estimators and the equilibrium layer. Pure PyTorch."""

from .compile import CompiledCell
from .core import DEQConvergenceError, DEQFixedPoint, failed_samples, grad_estimator_from_hyperparameters
from .dropout import VariationalDropout, new_dropout_masks
from .grad import (
    GradientEstimator,
    ImplicitDifferentiation,
    NeumannPhantomGradient,
    OneStepGradient,
    UnrolledBackprop,
    UnrolledPhantomGradient,
    available_grad_estimators,
    get_grad_estimator,
    register_grad_estimator,
)
from .norm import apply_spectral_norm, apply_weight_norm, norm_cache, remove_norm
from .registry import normalize_name
from .regularization import jacobian_frobenius_loss
from .solvers import (
    GMRES,
    Anderson,
    Broyden,
    FixedPointFn,
    FixedPointIteration,
    Solver,
    SolverResult,
    available_solvers,
    get_solver,
    register_solver,
)
from .state import StateSpec, pack_state, unpack_state

__all__ = [
    "GMRES",
    "Anderson",
    "Broyden",
    "CompiledCell",
    "DEQConvergenceError",
    "DEQFixedPoint",
    "FixedPointFn",
    "FixedPointIteration",
    "GradientEstimator",
    "ImplicitDifferentiation",
    "NeumannPhantomGradient",
    "OneStepGradient",
    "Solver",
    "SolverResult",
    "StateSpec",
    "UnrolledBackprop",
    "UnrolledPhantomGradient",
    "VariationalDropout",
    "apply_spectral_norm",
    "apply_weight_norm",
    "available_grad_estimators",
    "available_solvers",
    "failed_samples",
    "get_grad_estimator",
    "get_solver",
    "grad_estimator_from_hyperparameters",
    "jacobian_frobenius_loss",
    "new_dropout_masks",
    "norm_cache",
    "normalize_name",
    "pack_state",
    "register_grad_estimator",
    "register_solver",
    "remove_norm",
    "unpack_state",
]
