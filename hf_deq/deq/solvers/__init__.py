"""Fixed-point solvers and their registry."""

from __future__ import annotations

from ..registry import Registry
from .anderson import Anderson
from .base import FixedPointFn, Solver, SolverResult
from .broyden import Broyden
from .fixed_point import FixedPointIteration
from .gmres import GMRES

SOLVERS: Registry[Solver] = Registry("solver")
SOLVERS.register("fixed_point", FixedPointIteration)
SOLVERS.register("anderson", Anderson)
SOLVERS.register("broyden", Broyden)
SOLVERS.register("gmres", GMRES)


def register_solver(name: str, cls: type[Solver], *, overwrite: bool = False) -> type[Solver]:
    """Make ``cls`` available as ``get_solver(name)`` and as a config ``solver`` value. A ``name`` taken by another
    class raises ``ValueError`` unless ``overwrite``."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"register_solver needs a subclass of Solver, got {cls!r}")
    return SOLVERS.register(name, cls, overwrite=overwrite)


def available_solvers() -> list[str]:
    """The registered solver names, sorted (read at call time: a newly registered solver is among them)."""
    return SOLVERS.names()


def get_solver(name: str | Solver, **hyperparameters) -> Solver:
    """A solver by name (``get_solver("anderson", memory=6)``); an instance is returned as it is."""
    if isinstance(name, Solver):
        if hyperparameters:
            raise TypeError("hyperparameters can only be given with a solver name, not with an instance")
        return name
    return SOLVERS.create(name, **hyperparameters)


__all__ = [
    "Anderson",
    "Broyden",
    "FixedPointFn",
    "FixedPointIteration",
    "GMRES",
    "Solver",
    "SolverResult",
    "available_solvers",
    "get_solver",
    "register_solver",
]
