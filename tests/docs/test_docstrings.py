"""Every public class and function of hf_deq (what ``__all__`` exports) has a docstring naming its arguments,
and the engine's solvers and gradient estimators cite the equation or paper they implement."""

from __future__ import annotations

import inspect
import re

import pytest
from public_api import public_names

#: engine callables that implement a method from the literature, and what their docstring must cite
CITATION = re.compile(r"\beq\.|\bequation\b|arXiv|et al\.|\(\d{4}\)|\b(19|20)\d\d\b", re.IGNORECASE)
ENGINE_METHODS = (
    "Anderson",
    "Broyden",
    "FixedPointIteration",
    "GMRES",
    "ImplicitDifferentiation",
    "NeumannPhantomGradient",
    "OneStepGradient",
    "UnrolledBackprop",
    "UnrolledPhantomGradient",
    "DEQFixedPoint",
    "jacobian_frobenius_loss",
)

DOCUMENTED = [entry for entry in public_names() if entry.documented]


def own_docstring(obj) -> str:
    """The object's own docstring (a class does not inherit its base's here)."""
    return (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or ""


def undocumented_arguments(obj) -> list[str]:
    """Parameters of a function, or of a class's ``__init__``, whose name its docstrings never mention. For a
    class, its own docstring, its ``__init__``'s and those of its hf_deq base classes count; parameters of the
    first base class from another library (``PretrainedConfig``'s, ``ModelOutput``'s fields) do not."""
    if inspect.isclass(obj):
        ours = [cls for cls in obj.__mro__ if cls.__module__.startswith("hf_deq")]
        inits = [cls.__dict__["__init__"] for cls in ours if "__init__" in cls.__dict__]
        text = "\n".join([*map(own_docstring, ours), *(init.__doc__ or "" for init in inits)])
        if not inits and not hasattr(obj, "__dataclass_fields__"):
            return []  # constructed as its base class from another library is
        foreign = next(cls for cls in obj.__mro__ if not cls.__module__.startswith("hf_deq"))
        try:
            inherited = (
                set(inspect.signature(foreign.__init__).parameters) if foreign is not object else set()
            )
        except (TypeError, ValueError):
            inherited = set()
        signature = inspect.signature(obj)
    else:
        text, inherited, signature = obj.__doc__ or "", set(), inspect.signature(obj)
    return [
        p.name
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in ("self", "cls")
        and p.name not in inherited
        and not re.search(rf"\b{re.escape(p.name)}\b", text)
    ]


@pytest.mark.parametrize("entry", DOCUMENTED, ids=lambda entry: entry.path)
def test_public_object_has_a_docstring(entry):
    assert own_docstring(entry.obj).strip(), f"{entry.path} has no docstring"


def test_public_docstrings_name_their_arguments():
    missing = {
        entry.path: undocumented_arguments(entry.obj)
        for entry in DOCUMENTED
        if undocumented_arguments(entry.obj)
    }
    assert not missing, "arguments the docstring does not mention:\n" + "\n".join(
        f"{k}: {v}" for k, v in missing.items()
    )


@pytest.mark.parametrize("name", ENGINE_METHODS)
def test_engine_docstrings_cite_what_they_implement(name):
    import hf_deq.deq

    obj = getattr(hf_deq.deq, name)
    assert CITATION.search(own_docstring(obj)), f"hf_deq.deq.{name}'s docstring cites no equation or paper"


def test_every_engine_estimator_and_solver_is_checked():
    import hf_deq.deq
    from hf_deq.deq import GradientEstimator, Solver

    classes = {
        name
        for name in hf_deq.deq.__all__
        if inspect.isclass(obj := getattr(hf_deq.deq, name))
        and issubclass(obj, (GradientEstimator, Solver))
        and obj not in (GradientEstimator, Solver)
    }
    assert classes <= set(ENGINE_METHODS), f"add to ENGINE_METHODS: {sorted(classes - set(ENGINE_METHODS))}"
