"""The one training layer of hf_deq: an Accelerate loop that every model family plugs into with a
``TrainingTask``. It imports no model family.

- ``flags``: ``FlagParser``, typed dataclasses to flags and back, ``--config FILE`` recipes;
- ``arguments``: the typed training arguments (dataclasses), parse-time checks;
- ``flag_ranges``: what every numeric flag accepts (NaN and ±inf never);
- ``errors``: ``TrainingError``, what stops an accepted run (one ``error:`` line from a script);
- ``accelerator``: the ``Accelerator``, seeding (also per step), logging;
- ``threads``: the intra-op thread count, from the CPUs other processes leave free unless the user chose;
- ``checkpoints`` / ``state``: atomic checkpoints, the ``--output_dir`` guards and lock, the ``TrainingState``
  they carry;
- ``record``: the training record saved with the model (what its evaluation needs: data, split, block size);
- ``step``: the guarded optimiser step (non-finite skip, buffer and update rollback, clipping);
- ``optimizer``: parameter groups with one weight-decay rule, optimiser and schedule builders;
- ``evaluation``: fixed ``eval_*`` keys, every example gathered once;
- ``tracking``: trackers, progress bar, ``--log_file``, weight fingerprints;
- ``probe``: ``--probe_steps`` / ``--probe_contractivity``, gradient alignment on a fixed batch while training;
- ``run_plot``: ``training_curves.png``, the picture of a run (``scripts/plot_run.py``);
- ``schedule``: the unrolled warm-up ``EstimatorSchedule``;
- ``task``: the ``TrainingTask`` base class and its registry;
- ``loop``: ``train(task, args)``;
- ``script``: ``training_script(task_name, __file__, __doc__)``, a training script's entry points.
"""

from .arguments import (
    DEQ_ARGUMENT_NAMES,
    DEQArguments,
    deq_overrides,
    parse_args,
    training_arguments_class,
    training_parser,
)
from .checkpoints import (
    CheckpointError,
    OutputDirLock,
    holds_a_model,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint_atomically,
)
from .errors import FlagError, TrainingError
from .evaluation import EVAL_KEYS, evaluate, load_packaged_metric, packaged_metric_path, solver_stats
from .flags import FlagParser
from .loop import build_dataloaders, num_parameters, train
from .optimizer import build_optimizer, build_scheduler, parameter_groups
from .record import data_source_flags, evaluation_data_flags, training_record, write_training_record
from .schedule import EstimatorSchedule
from .script import training_script
from .state import TrainingState, TrainingStateError
from .step import BufferRollback, GuardedStep, NonFiniteStepGuard, gradients_are_finite
from .task import TaskData, TrainingTask, available_tasks, get_task, register_task
from .tracking import log_step, state_fingerprint

__all__ = [
    "DEQ_ARGUMENT_NAMES",
    "DEQArguments",
    "EVAL_KEYS",
    "BufferRollback",
    "CheckpointError",
    "EstimatorSchedule",
    "FlagError",
    "FlagParser",
    "GuardedStep",
    "NonFiniteStepGuard",
    "OutputDirLock",
    "TaskData",
    "TrainingError",
    "TrainingState",
    "TrainingStateError",
    "TrainingTask",
    "available_tasks",
    "build_dataloaders",
    "build_optimizer",
    "build_scheduler",
    "data_source_flags",
    "deq_overrides",
    "evaluate",
    "evaluation_data_flags",
    "get_task",
    "gradients_are_finite",
    "holds_a_model",
    "list_checkpoints",
    "load_packaged_metric",
    "log_step",
    "num_parameters",
    "packaged_metric_path",
    "parameter_groups",
    "parse_args",
    "register_task",
    "resolve_checkpoint",
    "save_checkpoint_atomically",
    "solver_stats",
    "state_fingerprint",
    "train",
    "training_arguments_class",
    "training_parser",
    "training_record",
    "training_script",
    "write_training_record",
]
