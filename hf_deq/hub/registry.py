"""What the Hub layer needs to know about a model family: the ``CardFacts`` each family declares in the model
layer (``hf_deq.models.card_facts``, re-exported here) and ``get_card_facts``, the Hub's lookup.

The card, the push checks and the solver-statistics probe read them, and nothing in ``hf_deq.hub`` names a
family. This module (and ``errors``, ``hf_deq.models.card_facts``) imports nothing heavy (no ``huggingface_hub``,
no ``transformers``).
"""

from __future__ import annotations

from ..models.card_facts import (
    CardFacts,
    CardMetric,
    register_card_facts,
    registered_card_facts,
    registered_model_types,
    unregister_card_facts,
)
from .errors import HubPushError

__all__ = [
    "CardFacts",
    "CardMetric",
    "get_card_facts",
    "register_card_facts",
    "registered_model_types",
    "unregister_card_facts",
]


def get_card_facts(model_type: str) -> CardFacts:
    """The card facts of ``model_type``; ``HubPushError`` naming the registered families if it has none."""
    facts = registered_card_facts(model_type)
    if facts is None:
        raise HubPushError(
            f"no model-card facts for model_type={model_type!r}; registered: {registered_model_types()} "
            "(a family registers them with hf_deq.models.card_facts.register_card_facts)"
        )
    return facts
