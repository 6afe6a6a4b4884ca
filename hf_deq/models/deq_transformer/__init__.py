"""DEQ-Transformer causal language model. Importing this registers its classes with the Auto classes and its
presets with ``hf_deq.variants``."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import hub_card as _hub_card  # noqa: F401  (registers what the Hub model card says)
from . import presets as _presets  # noqa: F401  (registers the presets)
from .configuration_deq_transformer import DEQTransformerConfig
from .modeling_deq_transformer import (
    DEQTransformerForCausalLM,
    DEQTransformerModel,
    DEQTransformerPreTrainedModel,
)

AutoConfig.register(DEQTransformerConfig.model_type, DEQTransformerConfig, exist_ok=True)
AutoModel.register(DEQTransformerConfig, DEQTransformerModel, exist_ok=True)
AutoModelForCausalLM.register(DEQTransformerConfig, DEQTransformerForCausalLM, exist_ok=True)

__all__ = [
    "DEQTransformerConfig",
    "DEQTransformerForCausalLM",
    "DEQTransformerModel",
    "DEQTransformerPreTrainedModel",
]
