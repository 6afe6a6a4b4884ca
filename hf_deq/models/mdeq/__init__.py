"""MDEQ (multiscale deep equilibrium model) for image classification.

Importing this package registers ``MDEQConfig`` with ``AutoConfig``, ``MDEQModel`` with ``AutoModel``,
``MDEQForImageClassification`` with ``AutoModelForImageClassification``, ``MDEQImageProcessor`` with
``AutoImageProcessor``, the ``mdeq-*`` presets with ``hf_deq.variants``, and hf_deq's image-classification pipeline
(the per-call solver budget keywords) with ``transformers.pipeline``.
"""

import warnings

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from ...pipelines import register_pipelines
from . import hub_card as _hub_card  # noqa: F401  (registers what the Hub model card says)
from . import presets as _presets  # noqa: F401  (registers the mdeq-* presets)
from .configuration_mdeq import MDEQConfig
from .image_processing_mdeq import MDEQImageProcessor
from .modeling_mdeq import MDEQForImageClassification, MDEQModel, MDEQPreTrainedModel

AutoConfig.register(MDEQConfig.model_type, MDEQConfig, exist_ok=True)
AutoModel.register(MDEQConfig, MDEQModel, exist_ok=True)
AutoModelForImageClassification.register(MDEQConfig, MDEQForImageClassification, exist_ok=True)
register_pipelines()
try:
    AutoImageProcessor.register(
        MDEQConfig, image_processor_classes={"pil": MDEQImageProcessor}, exist_ok=True
    )
except ImportError as err:  # transformers < 5.2x: AutoImageProcessor itself needs torchvision
    warnings.warn(
        f"AutoImageProcessor is unavailable ({str(err).strip()[:120]}...); MDEQ models work, but "
        "AutoImageProcessor/pipeline cannot resolve MDEQImageProcessor until torchvision is installed. "
        "Use hf_deq.MDEQImageProcessor directly.",
        UserWarning,
        stacklevel=2,
    )

__all__ = [
    "MDEQConfig",
    "MDEQForImageClassification",
    "MDEQImageProcessor",
    "MDEQModel",
    "MDEQPreTrainedModel",
]
