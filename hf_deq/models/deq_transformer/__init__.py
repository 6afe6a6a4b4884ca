"""DEQ-Transformer causal language model. ``register()`` (run by ``hf_deq.models.register_models`` at
``import hf_deq``) registers its classes with the Auto classes and its card facts; importing the package registers
its presets with ``hf_deq.variants``."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ..card_facts import register_card_facts
from . import presets as _presets  # noqa: F401  (registers the presets)
from .configuration_deq_transformer import DEQTransformerConfig
from .hub_card import CARD_FACTS
from .modeling_deq_transformer import (
    DEQTransformerForCausalLM,
    DEQTransformerModel,
    DEQTransformerPreTrainedModel,
)


def register() -> None:
    """Register the family with the transformers Auto classes and its card facts (idempotent)."""
    AutoConfig.register(DEQTransformerConfig.model_type, DEQTransformerConfig, exist_ok=True)
    AutoModel.register(DEQTransformerConfig, DEQTransformerModel, exist_ok=True)
    AutoModelForCausalLM.register(DEQTransformerConfig, DEQTransformerForCausalLM, exist_ok=True)
    register_card_facts(CARD_FACTS)


__all__ = [
    "DEQTransformerConfig",
    "DEQTransformerForCausalLM",
    "DEQTransformerModel",
    "DEQTransformerPreTrainedModel",
]
