"""Pieces shared by the engine tests: random contractions, a small contractive cell, estimator settings."""

from __future__ import annotations

import torch
from torch import nn

#: small-k settings for every built-in estimator (keyword arguments of ``get_grad_estimator``)
ESTIMATORS = {
    "implicit": {},
    "upg": {"steps": 3, "damping": 0.5},
    "npg": {"steps": 3, "damping": 0.5},
    "one_step": {},
    "unrolled": {"steps": 3},
}


def contraction(dim: int, norm: float, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A random ``dim x dim`` matrix with spectral norm exactly ``norm``."""
    w = torch.randn(dim, dim, generator=generator, dtype=dtype)
    return w * (norm / torch.linalg.matrix_norm(w, ord=2))


class Cell(nn.Module):
    """``f(z) = tanh(Linear(z) + injection)``, contractive (spectral norm 0.6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        with torch.no_grad():
            self.lin.weight.mul_(0.6 / torch.linalg.matrix_norm(self.lin.weight, ord=2))

    def forward(self, z, injection):
        return torch.tanh(self.lin(z) + injection)


def engine_config(**overrides):
    """A stand-in for a model config: the DEQ fields ``DEQFixedPoint.from_config`` / ``reconfigure`` read, at
    their defaults (the engine knows no transformers config class)."""
    fields = {
        "solver": "anderson",
        "grad_estimator": "upg",
        "grad_steps": 5,
        "grad_damping": 0.5,
        "grad_solver": "gmres",
        "grad_max_iter": 30,
        "grad_tol": 1e-6,
        "solver_max_iter": 30,
        "solver_tol": 1e-3,
        "solver_stop_mode": "rel",
        "solver_eval_max_iter": None,
        "solver_kwargs": None,
        "jacobian_reg_weight": 0.0,
        "solver_on_failure": "warn",
        "compile_cell": False,
        "compile_solve": False,
        **overrides,
    }
    config = type("Config", (), {})()
    for name, value in fields.items():
        setattr(config, name, value)
    return config
