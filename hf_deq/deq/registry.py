"""A small name -> class registry shared by solvers and gradient estimators (timm-style).

A registered class describes itself with two class attributes, read by the model card and the docs: ``label``
(short, e.g. ``"UPG"``) and ``description`` (one line: what it is, citing the paper equation where relevant)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """The registry key of ``name``: ``"One-Step"`` -> ``"one_step"`` (case, dashes and spaces do not matter)."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class Registry(Generic[T]):
    """Maps normalised names to classes; ``create(name, **hp)`` builds an instance."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str, cls: type[T], *, overwrite: bool = False) -> type[T]:
        key = normalize_name(name)
        if key in self._classes and not overwrite and self._classes[key] is not cls:
            raise ValueError(
                f"a {self.kind} named {key!r} is already registered; pass overwrite=True to replace it"
            )
        self._classes[key] = cls
        return cls

    def unregister(self, name: str) -> type[T]:
        """Remove ``name`` (``ValueError`` if it is not registered) and return its class; for tests and plugins."""
        cls = self.get_class(name)
        del self._classes[normalize_name(name)]
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __iter__(self) -> Iterator[str]:
        """The registered names in registration order (the built-in ones first)."""
        return iter(list(self._classes))

    def label(self, name: str) -> str:
        """The short label of the class registered as ``name``: its own ``label``, else the registry name."""
        return vars(self.get_class(name)).get("label") or normalize_name(name)

    def description(self, name: str) -> str:
        """One line on the class registered as ``name``: its own ``description``, else the first paragraph of
        its own docstring, else the description it inherits, else ``"a registered <kind>"``."""
        cls = self.get_class(name)
        own = vars(cls).get("description") or _first_paragraph(vars(cls).get("__doc__"))
        return own or getattr(cls, "description", "") or f"a registered {self.kind}"

    def get_class(self, name: str) -> type[T]:
        if not isinstance(name, str):
            raise ValueError(
                f"{self.kind} must be a name (one of {self.names()}) or an instance, got {name!r}"
            )
        key = normalize_name(name)
        if key not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._classes[key]

    def name_of(self, obj: object) -> str | None:
        for key, cls in self._classes.items():
            if type(obj) is cls:
                return key
        return None

    def create(self, name: str, **hyperparameters) -> T:
        cls = self.get_class(name)
        accepted = accepted_arguments(cls)
        unknown = sorted(set(hyperparameters) - set(accepted))
        if unknown:
            raise TypeError(
                f"{self.kind} {normalize_name(name)!r} ({cls.__name__}) got unknown hyperparameter(s) {unknown}; "
                f"it accepts {accepted}"
            )
        return cls(**hyperparameters)


def accepted_arguments(cls: type) -> list[str]:
    """Names of the keyword arguments a class's constructor takes."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring as one line (``""`` for none)."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n", 1)[0]
    return " ".join(paragraph.split())
