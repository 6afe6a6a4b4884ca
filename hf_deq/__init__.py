"""hf_deq: Deep Equilibrium models for the Hugging Face ecosystem, trained with phantom gradients.

Importing ``hf_deq`` registers its configs and models with the ``transformers`` Auto classes.
"""

from .configuration_deq import DEQConfig, DEQConfigError
from .deq import (
    DEQFixedPoint,
    available_grad_estimators,
    available_solvers,
    get_grad_estimator,
    get_solver,
    register_grad_estimator,
    register_solver,
)
from .modeling_deq import DEQModelMixin
from .modeling_outputs import DEQCausalLMOutput, DEQImageClassifierOutput, DEQModelOutput
from .models import deq_transformer as _deq_transformer
from .models import mdeq as _mdeq
from .models.deq_transformer import *  # noqa: F403  (each family exports its classes and registers Auto classes)
from .models.mdeq import *  # noqa: F403
from .variants import create_config, create_model, list_variants

__version__ = "0.1.0"

__all__ = [
    "DEQCausalLMOutput",
    "DEQConfig",
    "DEQConfigError",
    "DEQFixedPoint",
    "DEQImageClassifierOutput",
    "DEQModelMixin",
    "DEQModelOutput",
    "__version__",
    "available_grad_estimators",
    "available_solvers",
    "get_grad_estimator",
    "get_solver",
    "register_grad_estimator",
    "register_solver",
    "create_config",
    "create_model",
    "list_variants",
    *_mdeq.__all__,
    *_deq_transformer.__all__,
]
