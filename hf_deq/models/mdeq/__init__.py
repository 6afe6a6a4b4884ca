"""MDEQ (multiscale deep equilibrium model) for image classification.

Importing this package registers ``MDEQConfig`` with ``AutoConfig``, ``MDEQModel`` with ``AutoModel``,
``MDEQForImageClassification`` with ``AutoModelForImageClassification``, ``MDEQImageProcessor`` with
``AutoImageProcessor``, and the ``mdeq-*`` presets with ``hf_deq.variants``.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from . import presets as _presets  # noqa: F401  (registers the mdeq-* presets)
from .configuration_mdeq import MDEQConfig
from .image_processing_mdeq import MDEQImageProcessor
from .modeling_mdeq import MDEQForImageClassification, MDEQModel, MDEQPreTrainedModel

AutoConfig.register(MDEQConfig.model_type, MDEQConfig, exist_ok=True)
AutoModel.register(MDEQConfig, MDEQModel, exist_ok=True)
AutoModelForImageClassification.register(MDEQConfig, MDEQForImageClassification, exist_ok=True)
AutoImageProcessor.register(MDEQConfig, image_processor_classes={"pil": MDEQImageProcessor}, exist_ok=True)

__all__ = [
    "MDEQConfig",
    "MDEQForImageClassification",
    "MDEQImageProcessor",
    "MDEQModel",
    "MDEQPreTrainedModel",
]
