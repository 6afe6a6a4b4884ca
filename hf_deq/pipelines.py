"""``transformers.pipeline`` support for the per-call solver budget: ``pipeline("image-classification",
model=mdeq)(image, solver_eval_max_iter=4)`` solves that call with that budget (``model.solver_budget``), as
``generate`` and the text-generation pipeline already do, and leaves the config untouched.

transformers' pipeline registry maps a task to one class for every model, so ``register_pipelines`` (called where
the MDEQ family registers its Auto classes) points "image-classification" at ``DEQImageClassificationPipeline``,
which builds the stock ``ImageClassificationPipeline`` for any model that is not a DEQ model: those behave, and
refuse the budget keywords, exactly as without hf_deq."""

from __future__ import annotations

from typing import Any

from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_classification import ImageClassificationPipeline

from .modeling_deq import SOLVER_BUDGET_KEYWORDS

#: the registry's name for the stock class, which ``register_pipelines`` replaces (and nothing else)
STOCK_IMAGE_CLASSIFICATION = "transformers.pipelines.image_classification.ImageClassificationPipeline"


def has_solver_budget(model: Any) -> bool:
    """Whether ``model`` takes per-call solver budgets: an hf_deq model, its remote-code copy, or a peft wrapper
    of one (which forwards attribute look-ups to the model it wraps)."""
    return callable(getattr(model, "solver_budget", None))


class DEQImageClassificationPipeline(ImageClassificationPipeline):
    """The image-classification pipeline of a DEQ model: the stock one, plus the ``SOLVER_BUDGET_KEYWORDS``
    (``solver_eval_max_iter``, ``solver_max_iter``, ``solver_tol``) at construction (every call) or per call.
    Constructing it for a model without solver budgets returns a stock ``ImageClassificationPipeline``."""

    def __new__(cls, *args: Any, **kwargs: Any):
        model = kwargs.get("model", args[0] if args else None)
        if model is not None and not has_solver_budget(model):
            return ImageClassificationPipeline(*args, **kwargs)  # not an instance of cls: no second __init__
        return super().__new__(cls)

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        budget = {key: kwargs.pop(key) for key in SOLVER_BUDGET_KEYWORDS if key in kwargs}
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        with self.model.solver_budget(**budget):  # a bad value fails here, before any image is read
            pass
        return preprocess_params, {**forward_params, **budget}, postprocess_params

    def _forward(self, model_inputs: dict[str, Any], **budget: Any) -> Any:
        with self.model.solver_budget(**budget):
            return super()._forward(model_inputs)


def register_pipelines() -> None:
    """Make ``pipeline("image-classification", ...)`` build ``DEQImageClassificationPipeline`` (idempotent). A
    class that someone else registered for the task is left in place."""
    entry = PIPELINE_REGISTRY.supported_tasks["image-classification"]
    if entry["impl"] in (STOCK_IMAGE_CLASSIFICATION, ImageClassificationPipeline):
        # Not ``register_pipeline``: it logs an overwrite warning and marks the class as custom code, which would
        # make ``pipe.save_pretrained`` write ``custom_pipelines`` into the model's config.
        PIPELINE_REGISTRY.supported_tasks["image-classification"] = {
            **entry,
            "impl": DEQImageClassificationPipeline,
        }


__all__ = ["DEQImageClassificationPipeline", "has_solver_budget", "register_pipelines"]
