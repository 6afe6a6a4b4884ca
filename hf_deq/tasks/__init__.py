"""The training tasks of the model families, registered with ``hf_deq.training.register_task``:
``image-classification`` (MDEQ) and ``causal-lm`` (DEQ-Transformer). A new family adds its module here.
``training_script`` (``hf_deq.training.script``) is re-exported here so that a script importing it finds every
task registered."""

from ..training.script import training_script
from ..training.task import available_tasks, get_task, register_task
from .causal_lm import CausalLMTask
from .image_classification import ImageClassificationTask

__all__ = [
    "CausalLMTask",
    "ImageClassificationTask",
    "available_tasks",
    "get_task",
    "register_task",
    "training_script",
]
