"""Named presets (timm style): ``create_config("mdeq-tiny-cifar10")``, ``create_model(...)``.

Each model family registers its presets in ``hf_deq/models/<family>/presets.py`` with ``register_variant``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .configuration_deq import LABEL_KEYS


@dataclass(frozen=True)
class Variant:
    """A preset: the config class, its fields, and the model class ``create_model`` builds by default."""

    name: str
    config_class: type
    config_kwargs: dict[str, Any]
    model_class: type
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


_VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    if variant.name in _VARIANTS:
        raise ValueError(f"a variant named {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def list_variants(prefix: str = "", include_test: bool = False) -> list[str]:
    """Names of the registered presets starting with ``prefix`` (the tiny ``test_*`` ones with
    ``include_test=True``)."""
    return sorted(
        n for n in _VARIANTS if n.startswith(prefix) and (include_test or not n.startswith("test_"))
    )


def get_variant(name: str) -> Variant:
    if name not in _VARIANTS:
        raise ValueError(f"unknown preset {name!r}; available: {list_variants(include_test=True)}")
    return _VARIANTS[name]


def create_config(name: str, **overrides: Any):
    """The config of preset ``name`` with ``overrides`` applied (validated like any config). Labels given as
    ``num_labels`` or ``id2label`` replace the preset's labels (all of ``num_labels``, ``id2label``,
    ``label2id``); a ``num_labels`` that contradicts the given ``id2label`` is an error."""
    variant = get_variant(name)
    preset = variant.config_kwargs
    if "num_labels" in overrides or "id2label" in overrides:
        preset = {k: v for k, v in preset.items() if k not in LABEL_KEYS}
    return variant.config_class(**{**preset, **overrides})


def create_model(name: str, model_class: type | None = None, **overrides: Any):
    """A freshly initialised model of preset ``name`` (``model_class`` defaults to the preset's task model)."""
    variant = get_variant(name)
    return (model_class or variant.model_class)(create_config(name, **overrides))


__all__ = ["Variant", "create_config", "create_model", "get_variant", "list_variants", "register_variant"]
