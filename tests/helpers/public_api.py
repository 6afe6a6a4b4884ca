"""The public API of hf_deq: what the package and its subpackages export in ``__all__``.

Shared by the API reference page (``docs/api.md``, checked by ``tests/docs/test_api_reference.py``) and the
docstring test (``tests/docs/test_docstrings.py``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: the modules whose ``__all__`` is the public API, with their section title on the API page; the top-level
#: package re-exports names of ``hf_deq.deq`` and of the families, listed once, under their own module
PUBLIC_MODULES: dict[str, str] = {
    "hf_deq": "Models, configs and presets (`hf_deq`)",
    "hf_deq.models.mdeq": "MDEQ (`hf_deq.models.mdeq`)",
    "hf_deq.models.deq_transformer": "DEQ-Transformer (`hf_deq.models.deq_transformer`)",
    "hf_deq.deq": "Engine (`hf_deq.deq`)",
    "hf_deq.diagnostics": "Diagnostics (`hf_deq.diagnostics`)",
    "hf_deq.trainer_callbacks": "Trainer callbacks (`hf_deq.trainer_callbacks`)",
    "hf_deq.training": "Training (`hf_deq.training`)",
    "hf_deq.tasks": "Tasks (`hf_deq.tasks`)",
    "hf_deq.hub": "Publishing (`hf_deq.hub`)",
}

#: subpackages with an ``__all__`` that are not public API, and why
NOT_PUBLIC: dict[str, str] = {
    "hf_deq.benchmarks": "the pieces of the benchmark scripts, not a library API (issue 17 moves them out)",
}


@dataclass(frozen=True)
class PublicName:
    """One exported name: the module whose ``__all__`` lists it first, the name, and the object."""

    module: str
    name: str
    obj: Any

    @property
    def documented(self) -> bool:
        """Classes and functions are documented by mkdocstrings; constants and type aliases by name."""
        return inspect.isclass(self.obj) or inspect.isfunction(self.obj)

    @property
    def path(self) -> str:
        """The dotted path mkdocstrings resolves: where the object is defined (lazy exports included)."""
        if self.documented:
            return f"{self.obj.__module__}.{self.obj.__qualname__}"
        return f"{self.module}.{self.name}"


def public_names() -> Iterator[PublicName]:
    """Every public name once (by object identity for classes and functions), in ``PUBLIC_MODULES`` order,
    the subpackage that defines it winning over a re-export from ``hf_deq``."""
    seen: set[int] = set()
    owners = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            owners.setdefault(id(obj), []).append(module_name)
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            entry = PublicName(module_name, name, obj)
            if entry.documented:
                candidates = owners[id(obj)]
                owner = next((m for m in candidates if m != "hf_deq"), candidates[0])
                if owner != module_name or id(obj) in seen:
                    continue
                seen.add(id(obj))
            yield entry


def api_page() -> str:
    """The text of ``docs/api.md``: one mkdocstrings block per class or function, constants by name."""
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings of the public API: what `hf_deq` and its subpackages export in",
        "`__all__`. `tests/docs/test_api_reference.py` checks that this page lists every public name; regenerate",
        "it with `python tests/helpers/public_api.py > docs/api.md`.",
    ]
    entries = list(public_names())
    for module_name, title in PUBLIC_MODULES.items():
        own = [e for e in entries if e.module == module_name]
        if not own:
            continue
        lines += ["", f"## {title}"]
        constants = [e for e in own if not e.documented]
        if constants:
            lines += ["", "Constants and type aliases: " + ", ".join(f"`{e.path}`" for e in constants) + "."]
        for entry in own:
            if entry.documented:
                lines += ["", f"::: {entry.path}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(api_page(), end="")
