"""What the Hub model card says about MDEQ classifiers (``register`` of the family package registers it;
``hf_deq.hub`` reads it)."""

from __future__ import annotations

import torch

from ..card_facts import CardFacts, CardMetric
from .configuration_mdeq import MDEQConfig


def probe_inputs(config, num_samples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random images of the configured size, for measuring solver statistics without evaluation data."""
    size = config.image_size
    return {"pixel_values": torch.randn(num_samples, config.num_channels, size, size, generator=generator)}


CARD_FACTS = CardFacts(
    model_type=MDEQConfig.model_type,
    template="mdeq_classifier.md.jinja",
    pipeline_tag="image-classification",
    task_name="Image classification",
    auto_class="AutoModelForImageClassification",
    description="multiscale deep equilibrium (MDEQ) image classifier",
    metrics=(
        CardMetric("eval_accuracy", "accuracy", "Accuracy"),
        CardMetric("eval_loss", "loss", "Loss", headline=False),
    ),
    probe_inputs=probe_inputs,
    builtin_datasets={"digits": "scikit-learn's 1,797 8x8 handwritten digits (sklearn.datasets.load_digits)"},
    citations=(
        ("geng2021training", "Phantom gradients (the training method)"),
        ("bai2020multiscale", "Multiscale deep equilibrium models (the architecture)"),
        ("bai2019deep", "Deep equilibrium models"),
    ),
    tags=("mdeq", "multiscale-deq"),
)
