"""The settings every benchmark case shares, and hf_deq's solvers and estimators built with them.

Hyperparameters are aligned with torchdeq's (``torchdeq_adapter``): Anderson memory 6, regularization 1e-4,
mixing 1 (torchdeq's defaults) forward and backward; Broyden keeps 20 rank-one updates in the forward solve.
"""

from __future__ import annotations

from collections.abc import Callable

from hf_deq.deq import DEQFixedPoint, GradientEstimator, get_grad_estimator, get_solver
from hf_deq.deq.solvers import Solver

FWD_TOL = 1e-3
FWD_MAX_ITER = 50
GRAD_TOL = 1e-6
GRAD_MAX_ITER = 50
ANDERSON_MEMORY = 6  # torchdeq's default m; our default is 5
ANDERSON_REG = 1e-4  # torchdeq's default lam (ours scales the system to unit diagonal first)
BROYDEN_MEMORY = 20  # our default; torchdeq gets LBFGS_thres=20 in the forward solve
PG_STEPS, PG_DAMPING = 5, 0.5
MEMORY_BUDGETS = (10, 40)

FORWARD_SOLVERS = ("fixed_point", "anderson", "broyden")
UPG = f"upg ({PG_STEPS}, {PG_DAMPING})"
NPG = f"npg ({PG_STEPS}, {PG_DAMPING})"


def our_solver(name: str) -> Solver:
    if name == "anderson":
        return get_solver("anderson", memory=ANDERSON_MEMORY, regularization=ANDERSON_REG)
    if name == "broyden":
        return get_solver("broyden", memory=BROYDEN_MEMORY)
    return get_solver(name)


def our_estimators() -> dict[str, Callable[[], GradientEstimator]]:
    """Name -> factory of every estimator the benchmark times (names as they appear in the tables)."""

    def implicit(solver: str, **kw) -> GradientEstimator:
        return get_grad_estimator(
            "implicit", solver=solver, max_iter=GRAD_MAX_ITER, tol=GRAD_TOL, solver_kwargs=kw
        )

    return {
        "implicit [gmres]": lambda: implicit("gmres"),
        "implicit [anderson]": lambda: implicit(
            "anderson", memory=ANDERSON_MEMORY, regularization=ANDERSON_REG
        ),
        "implicit [broyden]": lambda: implicit("broyden", memory=GRAD_MAX_ITER),
        UPG: lambda: get_grad_estimator("upg", steps=PG_STEPS, damping=PG_DAMPING),
        NPG: lambda: get_grad_estimator("npg", steps=PG_STEPS, damping=PG_DAMPING),
        "one_step": lambda: get_grad_estimator("one_step"),
        f"unrolled ({PG_STEPS})": lambda: get_grad_estimator("unrolled", steps=PG_STEPS),
    }


def our_deq(
    solver: str, estimator: str | GradientEstimator, max_iter: int = FWD_MAX_ITER, tol: float = FWD_TOL
) -> DEQFixedPoint:
    return DEQFixedPoint(our_solver(solver), estimator, max_iter=max_iter, tol=tol, on_failure="ignore")
