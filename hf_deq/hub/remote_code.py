"""The remote-code bundle: a model family's modules and the engine modules they import, generated at push time
from the installed hf_deq sources, with package-relative imports rewritten into flat sibling imports (what
``transformers``' dynamic module loader resolves), plus the ``auto_map`` entries for every Auto class the family
registered. A pushed repo therefore loads with ``trust_remote_code=True`` where hf_deq is not installed, and
without it where ``import hf_deq`` has registered the model type."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .model_dir import GENERATED_MARKER

PACKAGE = "hf_deq"
#: the ``hf_deq`` package folder
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RemoteCodeBundle:
    """Generated source ``files`` (``{file name: source}``), the ``auto_map`` entries of ``config.json`` and the
    ``processor_auto_map`` ones of the processor's config that point into them, and ``sources`` (``{file name:
    the hf_deq module it was generated from}``)."""

    files: dict[str, str] = field(default_factory=dict)
    auto_map: dict[str, str] = field(default_factory=dict)
    processor_auto_map: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(
        default_factory=dict
    )  # file name -> the hf_deq module it was generated from

    def write(self, folder: str | os.PathLike) -> list[Path]:
        written = []
        for name, source in sorted(self.files.items()):
            path = Path(folder) / name
            path.write_text(source, encoding="utf-8")
            written.append(path)
        return written


def _family_package(module_name: str) -> str:
    """``hf_deq.models.mdeq.modeling_mdeq`` -> ``hf_deq.models.mdeq`` (the family package)."""
    parts = module_name.split(".")
    if len(parts) >= 4 and parts[0] == PACKAGE and parts[1] == "models":
        return ".".join(parts[:3])
    return module_name.rpartition(".")[0]


def _flat_name(module_name: str, family_package: str) -> str:
    """The file stem a module of ``hf_deq`` gets in the flat bundle: the family's own modules keep their names
    (``modeling_mdeq``), engine modules are named by their path (``hf_deq.deq.solvers.base`` ->
    ``deq_solvers_base``, the package ``hf_deq.deq`` -> ``deq``)."""
    if module_name.startswith(family_package + "."):
        return module_name[len(family_package) + 1 :].replace(".", "_")
    if module_name == PACKAGE or not module_name.startswith(PACKAGE + "."):
        raise BundleError(f"cannot bundle {module_name!r}: only submodules of {PACKAGE} can be bundled")
    return module_name[len(PACKAGE) + 1 :].replace(".", "_")


def _module_file(module_name: str) -> tuple[Path, bool]:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise BundleError(f"cannot find the source of {module_name!r}")
    return Path(spec.origin), spec.submodule_search_locations is not None


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _rewrite_module(module_name: str, family_package: str) -> tuple[str, list[str]]:
    """Source of ``module_name`` with every import of an ``hf_deq`` module rewritten as
    ``from .<flat name> import ...``; returns ``(source, imported hf_deq modules)``."""
    path, is_package = _module_file(module_name)
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    package = module_name if is_package else module_name.rpartition(".")[0]
    lines = source.splitlines(keepends=True)
    replacements: list[tuple[int, int, str]] = []
    needed: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    raise BundleError(
                        f"{path}:{node.lineno}: 'import {alias.name}' cannot be bundled; use 'from ... import ...'"
                    )
            continue
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        if node.level:
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            base = node.module
        else:
            continue
        for alias in node.names:
            if alias.name != "*" and _is_module(f"{base}.{alias.name}"):
                raise BundleError(
                    f"{path}:{node.lineno}: 'from {'.' * node.level}{node.module or ''} import {alias.name}' imports "
                    "a module; the Hub's flat module loader only follows 'from .module import name'. Import the "
                    "names from the module instead."
                )
        flat = _flat_name(base, family_package)
        names = ", ".join(f"{a.name} as {a.asname}" if a.asname else a.name for a in node.names)
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset :]
        if head.strip() or (tail.strip() and not tail.strip().startswith("#")):
            raise BundleError(f"{path}:{node.lineno}: put this import on its own line(s) to bundle it")
        newline = "\n" if lines[last].endswith("\n") else ""
        replacements.append((first, last, f"{head}from .{flat} import {names}{tail.rstrip()}{newline}"))
        needed.append(base)
    for first, last, text in sorted(replacements, reverse=True):
        lines[first : last + 1] = [text]
    return "".join(lines), needed


def _collect_bundle(
    entry_modules: Iterable[str], family_package: str
) -> tuple[dict[str, str], dict[str, str]]:
    files: dict[str, str] = {}
    sources: dict[str, str] = {}
    todo = list(dict.fromkeys(entry_modules))
    seen: set[str] = set()
    from .. import __version__

    while todo:
        module_name = todo.pop(0)
        if module_name in seen:
            continue
        seen.add(module_name)
        flat = _flat_name(module_name, family_package)
        file_name = f"{flat}.py"
        if file_name in files:
            raise BundleError(f"two modules map to {file_name}: {sources[file_name]} and {module_name}")
        source, needed = _rewrite_module(module_name, family_package)
        path, _ = _module_file(module_name)
        relative = (
            path.relative_to(PACKAGE_ROOT.parent).as_posix()
            if path.is_relative_to(PACKAGE_ROOT.parent)
            else path.name
        )
        header = (
            f"# This file was {GENERATED_MARKER} {__version__} from {relative} for loading with\n"
            "# trust_remote_code=True where hf_deq is not installed. Edit the hf_deq sources, not this file.\n"
        )
        files[file_name] = header + source
        sources[file_name] = module_name
        todo.extend(n for n in needed if n not in seen)
    return files, sources


def _auto_model_classes() -> list[str]:
    from transformers.models.auto import modeling_auto

    return sorted(
        name
        for name in dir(modeling_auto)
        if name.startswith("AutoModel") and hasattr(getattr(modeling_auto, name), "_model_mapping")
    )


def _registered_classes(config_class: type) -> dict[str, type]:
    """``{Auto class name: model class}`` for every Auto model class the config class is registered with."""
    import transformers

    found: dict[str, type] = {}
    for name in _auto_model_classes():
        auto_class = getattr(transformers, name, None)
        if auto_class is None:
            continue
        try:
            model_class = auto_class._model_mapping[config_class]
        except (KeyError, ValueError, AttributeError):
            continue
        if isinstance(model_class, (list, tuple)):
            model_class = model_class[0]
        if isinstance(model_class, type) and model_class.__module__.startswith(PACKAGE + "."):
            found[name] = model_class
    return found


def _find_hf_deq_class(name: str, near_module: str) -> type | None:
    """A class named ``name`` defined in hf_deq (looked up in the family package, then in ``hf_deq``)."""
    for module_name in (_family_package(near_module), PACKAGE):
        cls = getattr(importlib.import_module(module_name), name, None)
        if isinstance(cls, type) and cls.__module__.startswith(PACKAGE + "."):
            return cls
    return None


def build_remote_code_bundle(
    config_or_model_type: Any, processor_class_names: Iterable[str] = ()
) -> RemoteCodeBundle:
    """Generate the remote-code bundle of a model family from the installed hf_deq sources.

    ``config_or_model_type`` is a config, a config class or a ``model_type`` registered by ``import hf_deq``;
    ``processor_class_names`` are processor classes the repo names (e.g. ``"MDEQImageProcessor"``)."""
    import transformers

    from ..models import register_models

    register_models()  # the model types CONFIG_MAPPING resolves

    if isinstance(config_or_model_type, str):
        config_class = transformers.CONFIG_MAPPING[config_or_model_type]
    elif isinstance(config_or_model_type, type):
        config_class = config_or_model_type
    else:
        config_class = type(config_or_model_type)
    if not config_class.__module__.startswith(PACKAGE + "."):
        raise BundleError(f"{config_class.__name__} is not an hf_deq config")
    family_package = _family_package(config_class.__module__)
    models = _registered_classes(config_class)
    if not models:
        raise BundleError(
            f"no Auto model class is registered for {config_class.__name__}; import hf_deq first"
        )

    entry = [config_class.__module__, *(cls.__module__ for cls in models.values())]
    processors: dict[str, type] = {}
    for name in processor_class_names:
        cls = _find_hf_deq_class(name, config_class.__module__)
        if cls is not None:
            processors[name] = cls
            entry.append(cls.__module__)
    files, sources = _collect_bundle(entry, family_package)

    def ref(cls: type) -> str:
        return f"{_flat_name(cls.__module__, family_package)}.{cls.__name__}"

    bundle = RemoteCodeBundle(files=files, sources=sources)
    bundle.auto_map = {"AutoConfig": ref(config_class), **{name: ref(cls) for name, cls in models.items()}}
    for cls in processors.values():
        if "ImageProcessor" in cls.__name__:
            bundle.processor_auto_map["AutoImageProcessor"] = ref(cls)
        elif "FeatureExtractor" in cls.__name__:
            bundle.processor_auto_map["AutoFeatureExtractor"] = ref(cls)
        elif "Processor" in cls.__name__:
            bundle.processor_auto_map["AutoProcessor"] = ref(cls)
    _check_bundle(bundle)
    return bundle


def _check_bundle(bundle: RemoteCodeBundle) -> None:
    """What transformers' loader needs: every file compiles, relative imports name sibling files (the loader
    finds them with the regex of ``dynamic_module_utils.get_relative_imports``), no ``hf_deq`` import is left."""
    pattern = re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE)
    for name, source in bundle.files.items():
        compile(source, name, "exec")
        for target in pattern.findall(source):
            if f"{target}.py" not in bundle.files:
                raise BundleError(f"{name} imports .{target}, which is not in the bundle")
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").split(".")[0] == PACKAGE
            ):
                raise BundleError(f"{name} still imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                raise BundleError(f"{name} still has a parent-package import")
    for auto_name, reference in {**bundle.auto_map, **bundle.processor_auto_map}.items():
        if f"{reference.split('.')[0]}.py" not in bundle.files:
            raise BundleError(f"auto_map[{auto_name!r}] = {reference!r} points outside the bundle")
