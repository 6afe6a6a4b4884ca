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
