"""What the Hub model card says about DEQ-Transformer language models (``register`` of the family package
registers it; ``hf_deq.hub`` reads it)."""

from __future__ import annotations

import torch

from ..card_facts import CardFacts, CardMetric
from .configuration_deq_transformer import DEQTransformerConfig


def probe_inputs(config, num_samples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random token ids (up to 32 per sample), for measuring solver statistics without evaluation data."""
    length = min(32, getattr(config, "max_position_embeddings", 32))
    return {"input_ids": torch.randint(0, config.vocab_size, (num_samples, length), generator=generator)}


CARD_FACTS = CardFacts(
    model_type=DEQTransformerConfig.model_type,
    template="deq_transformer_lm.md.jinja",
    pipeline_tag="text-generation",
    task_name="Causal language modeling",
    auto_class="AutoModelForCausalLM",
    description="DEQ-Transformer causal language model",
    metrics=(
        CardMetric("eval_perplexity", "perplexity", "Perplexity"),
        CardMetric("eval_loss", "loss", "Loss (nats/token)", headline=False),
    ),
    probe_inputs=probe_inputs,
    citations=(
        ("geng2021training", "Phantom gradients (the training method)"),
        ("bai2019deep", "Deep equilibrium models (the DEQ-Transformer)"),
    ),
    tags=("deq-transformer", "causal-lm"),
)
