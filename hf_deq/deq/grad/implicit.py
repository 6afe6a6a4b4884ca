"""Exact gradient by implicit differentiation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..solvers import Solver, SolverResult, get_solver
from ..solvers.base import FixedPointFn, check_solve_args
from .base import GradientEstimator
from .vjp import BackwardTransform, JacobianTransposeProduct, attach_through_one_call


class ImplicitDifferentiation(GradientEstimator, BackwardTransform):
    """Exact implicit-function-theorem gradient (phantom-gradient paper, arXiv 2111.05177, eq. 3).

    ``dL/dtheta = g (I - J)^{-1} dF/dtheta``: the backward solves the linear fixed point
    ``u = J^T u + g`` with an iterative ``solver`` (GMRES by default: the problem is linear), then
    backpropagates ``u`` through one recorded call ``F(z*)``. The forward value is ``z*``. Memory does not
    grow with the forward solver's iterations.

    Args:
        solver: backward solver, a name from ``available_solvers()`` or an instance.
        max_iter: budget of ``J^T v`` products.
        tol: stop when the relative residual of ``u`` is below this.
        solver_kwargs: hyperparameters for a solver given by name.
    """

    label = "implicit"
    description = (
        "exact implicit differentiation (arXiv 2111.05177, eq. 3): the backward pass solves u = J^T u + g "
        "with a linear solver"
    )

    def __init__(
        self,
        solver: str | Solver = "gmres",
        max_iter: int = 30,
        tol: float = 1e-6,
        solver_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_solve_args(max_iter, tol, "rel")
        self.solver = get_solver(solver, **(solver_kwargs or {}))
        self.max_iter = max_iter
        self.tol = float(tol)
        self.last_backward: SolverResult | None = None

    def attach(self, fn: FixedPointFn, z_star: Tensor) -> Tensor:
        return attach_through_one_call(fn, z_star, self)

    def transform(self, jtv: JacobianTransposeProduct, grad: Tensor) -> Tensor:
        g = grad.detach()
        start = torch.zeros_like(g)
        start_version = start._version

        def linear_map(u: Tensor) -> Tensor:
            # The solvers' first call is at the start point, where J^T 0 + g = g is known without a product
            # (GMRES recovers its offset b from it). Recognised by storage and version, so a copy or an in-place
            # change of the start simply takes the product.
            if (
                u.data_ptr() == start.data_ptr()
                and u.shape == start.shape
                and start._version == start_version
            ):
                return g.to(u.dtype, copy=True)
            return jtv(u) + g

        with torch.no_grad():
            result = self.solver.solve(linear_map, start, max_iter=self.max_iter, tol=self.tol)
        self.last_backward = result
        return result.z
