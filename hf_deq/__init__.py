"""hf_deq: Deep Equilibrium models for the Hugging Face ecosystem, trained with phantom gradients.

Importing ``hf_deq`` registers its configs and models with the ``transformers`` Auto classes
(``hf_deq.models.register_models``) and the Hub publisher of ``model.push_to_hub`` (``hf_deq.hub.register_publisher``). The engine
(``hf_deq.deq``: solvers, gradient estimators, ``DEQFixedPoint``) is pure PyTorch: it imports and runs where
``transformers`` is not installed, and only the model names then raise an ``ImportError`` saying so.
"""

from .deq import (
    DEQFixedPoint,
    available_grad_estimators,
    available_solvers,
    get_grad_estimator,
    get_solver,
    register_grad_estimator,
    register_solver,
)

__version__ = "0.1.0"

__all__ = [
    "DEQFixedPoint",
    "__version__",
    "available_grad_estimators",
    "available_solvers",
    "get_grad_estimator",
    "get_solver",
    "register_grad_estimator",
    "register_solver",
]

try:
    import transformers as _transformers  # noqa: F401
except ModuleNotFoundError as _err:
    if _err.name != "transformers":  # transformers is there but broken: show the real error
        raise
    _HF_LAYER_ERROR: ModuleNotFoundError | None = _err
else:
    _HF_LAYER_ERROR = None

if _HF_LAYER_ERROR is None:
    from .configuration_deq import DEQConfig, DEQConfigError, MisspelledConfigFieldError
    from .hub import register_publisher as _register_publisher
    from .modeling_deq import DEQModelMixin
    from .modeling_outputs import DEQCausalLMOutput, DEQImageClassifierOutput, DEQModelOutput
    from .models import deq_transformer as _deq_transformer
    from .models import mdeq as _mdeq
    from .models import register_models as _register_models
    from .models.deq_transformer import *  # noqa: F403  (each family exports its classes)
    from .models.mdeq import *  # noqa: F403
    from .variants import create_config, create_model, list_variants

    # Registration is explicit: the model families (Auto classes, card facts), then the Hub layer's publisher
    # into the model layer's hook (models never import the Hub layer).
    _register_models()
    _register_publisher()

    __all__ += [
        "DEQCausalLMOutput",
        "DEQConfig",
        "DEQConfigError",
        "DEQImageClassifierOutput",
        "DEQModelMixin",
        "DEQModelOutput",
        "MisspelledConfigFieldError",
        "create_config",
        "create_model",
        "list_variants",
        *_mdeq.__all__,
        *_deq_transformer.__all__,
    ]
else:

    def __getattr__(name: str):
        """Without transformers, the model layer's names explain what is missing instead of a bare AttributeError."""
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"hf_deq.{name} needs the Hugging Face layer, but transformers is not installed "
            f"({_HF_LAYER_ERROR}). Install it with `pip install 'transformers>=5,<6'`; the engine "
            "(hf_deq.deq: solvers, gradient estimators, DEQFixedPoint) works without it."
        )
