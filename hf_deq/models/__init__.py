"""hf_deq model families. ``register_models()`` registers every family (its Auto classes and card facts);
``import hf_deq`` calls it, and code that needs the model types registered calls it too (idempotent)."""

from __future__ import annotations

#: the family packages under ``hf_deq.models``, each with a ``register()``
FAMILIES = ("mdeq", "deq_transformer")


def register_models() -> None:
    """Register every hf_deq model family with the transformers Auto classes and its card facts. Idempotent
    (registering again replaces the entries with the same classes); needs ``transformers``."""
    import importlib

    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}").register()
