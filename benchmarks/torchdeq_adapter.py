"""The optional torchdeq side of the comparison (``pip install --no-deps torchdeq``; not a dependency).

torchdeq is imported only by ``import_torchdeq``; everything else in ``benchmarks`` runs without it.
Its DEQ objects are built with the same budgets and tolerances as ours (``engines``); ``NOTES`` states where
the stop rules still differ.
"""

from __future__ import annotations

from typing import Any

from .engines import BROYDEN_MEMORY, FWD_MAX_ITER, FWD_TOL, GRAD_MAX_ITER, GRAD_TOL, PG_DAMPING, PG_STEPS

#: The forward solvers and backward estimators run through torchdeq (names as in the tables).
THEIR_SOLVERS = ("anderson", "broyden")
THEIR_IFT = ("ift [anderson]", "ift [broyden]")
THEIR_PHANTOM = f"phantom ({PG_STEPS}, {PG_DAMPING})"


class TorchDEQ:
    """The imported torchdeq module and its ``deq_decorator`` (which wraps ``f`` as its backward expects)."""

    def __init__(self, module: Any, deq_decorator: Any) -> None:
        self.module = module
        self.deq_decorator = deq_decorator
        self.version = getattr(module, "__version__", "0.1.x")


def import_torchdeq() -> tuple[TorchDEQ | None, Exception | None]:
    """``(TorchDEQ, None)``, or ``(None, the import error)`` when torchdeq is not importable."""
    try:
        import torchdeq
        from torchdeq.utils.layer_utils import deq_decorator
    except Exception as exc:
        return None, exc
    return TorchDEQ(torchdeq, deq_decorator), None


def their_deq(td: TorchDEQ, f_solver: str = "anderson", b_solver: str = "anderson", ift: bool = True, **kw):
    """A torchdeq DEQ layer with our budgets; ``ift=False`` gives its phantom gradient (PG_STEPS, PG_DAMPING)."""
    args = dict(
        core="indexing",
        f_solver=f_solver,
        b_solver=b_solver,
        f_max_iter=FWD_MAX_ITER,
        b_max_iter=GRAD_MAX_ITER,
        f_tol=FWD_TOL,
        b_tol=GRAD_TOL,
        f_stop_mode="rel",
        b_stop_mode="rel",
    )
    args.update(kw)
    if ift:
        args["ift"] = True
    else:
        args.update(grad=PG_STEPS, tau=PG_DAMPING)
    return td.module.get_deq(**args)


def their_solver_kwargs(solver: str) -> dict:
    # torchdeq's Anderson defaults (m=6, lam=1e-4, tau=1) are what ours is set to; Broyden gets our memory.
    return {"LBFGS_thres": BROYDEN_MEMORY} if solver == "broyden" else {}


def their_estimators(td: TorchDEQ) -> dict:
    """Name -> factory of torchdeq's backward estimators (names as in the tables)."""
    return {
        "ift [anderson]": lambda: their_deq(td, b_solver="anderson"),
        "ift [broyden]": lambda: their_deq(td, b_solver="broyden"),
        THEIR_PHANTOM: lambda: their_deq(td, ift=False),
    }


NOTES = f"""Notes on alignment with torchdeq:
- Relative residual: both use ||f(z) - z|| / ||f(z)|| per sample (eps 1e-8 here, 1e-9 there); the "rel residual"
  column is recomputed by this benchmark, max over the batch, for the iterate each library returns.
- Forward stop rule: ours stops once every sample's best residual is <= {FWD_TOL:g}; torchdeq stops once the current
  iterate's residual is < {FWD_TOL:g} for all samples at the same step. torchdeq's Anderson does not check its first
  two evaluations and returns f(z) of its best iterate; its Broyden may also stop after 30 steps without progress.
  "nfev" counts calls of f (both libraries), ours also reports SolverResult.nfev (equal).
- Backward: our implicit [anderson]/[broyden] and torchdeq's ift stop at rel residual {GRAD_TOL:g} of u = J^T u + g
  (same definition). Our GMRES stops on the least-squares residual ||(I - J^T) u - g|| / ||g|| of its Krylov problem.
  "backward passes through f" counts every backward through f, i.e. J^T v products + 1 for the final pass to the
  parameters (implicit, npg, ift) or one per unrolled step (upg, one_step, unrolled, phantom).
- torchdeq's backward is timed through its own gradient functor (the module's produce_grad, as its forward calls
  it) from the same z*; its ift re-runs f(z*) with autograd inside the backward, ours records it at attach.
- unrolled starts from z0 (it needs no fixed point)."""
