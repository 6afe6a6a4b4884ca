"""The typed arguments of every training script: dataclasses of the model, DEQ, optimisation, output and Hub
flags (a task adds its data flags: ``TrainingTask.arguments``), parsed by ``FlagParser`` (``--config FILE``
recipes included), and the checks done at parse time (before any data is loaded). A check never modifies its
input: it raises ``FlagError`` (one ``error:`` line naming the flag, exit status 2) or returns resolved values.

The DEQ flags are generated from the field table ``DEQ_FIELDS`` (``DEQConfig.SOLVER_FIELDS`` / ``GRAD_FIELDS`` +
``jacobian_reg_weight``; a config subclass's new field gets its flag, typed from its annotation and described by
the ``Args:`` entry of its docstring)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..configuration_deq import MAX_GRAD_STEPS, DEQConfig
from ..deq_fields import DEQ_FIELDS
from ..hub.cli import HubArguments
from ..hub.errors import InvalidRepoIdError
from .checkpoints import (
    CheckpointError,
    OutputDirLock,
    holds_a_model,
    list_checkpoints,
    output_dir_problem,
    resolve_checkpoint,
)
from .errors import FlagError
from .flag_ranges import (
    DECAY_FACTOR,
    LEARNING_RATE,
    NON_NEGATIVE,
    POSITIVE,
    SEED_RANGE,
    THREAD_RANGE,
    UNIT_INTERVAL,
    WORKER_RANGE,
    check_flag_ranges,
    count_range,
)
from .flags import DefaultsHelpFormatter, FlagParser, flag, json_object, merged_dataclass, refusing
from .state import TrainingState, TrainingStateError

if TYPE_CHECKING:
    import argparse

    from .task import TrainingTask


def deq_argument_names(config_class: type = DEQConfig) -> tuple[str, ...]:
    """The config fields of ``config_class`` that have a DEQ flag: the solver and estimator groups, and the
    Jacobian weight."""
    return (*config_class.SOLVER_FIELDS, *config_class.GRAD_FIELDS, "jacobian_reg_weight")


#: the DEQ flags of every training script
DEQ_ARGUMENT_NAMES = deq_argument_names()

MIXED_PRECISION = ("no", "fp16", "bf16")
#: what the training layer and the tasks receive as ``args``: an instance of ``training_arguments_class(task)`` (the
#: shared flag groups and the task's data flags in one dataclass, read by attribute)
TrainingArgs = Any
DEQ_GROUP = "DEQ solver and gradient estimator (default: the preset's)"

#: choices of the DEQ fields that have some, from the field table (the rest are checked by the config at parse time)
DEQ_FIELD_CHOICES = {f.name: f.choices for f in DEQ_FIELDS if f.choices is not None}


def _field_help(config_class: type) -> dict[str, str]:
    """``{field: text}`` of the ``Args:`` sections of the docstrings of a config class and its bases."""
    # the table's help; a subclass's docstring adds its own fields' help
    helps: dict[str, str] = {f.name: f.help for f in DEQ_FIELDS}
    for cls in reversed(config_class.__mro__):
        if isinstance(cls, type) and issubclass(cls, DEQConfig) and cls is not DEQConfig and cls.__doc__:
            helps.update(_docstring_args(cls.__doc__))
    return {k: v.replace("%", "%%") for k, v in helps.items()}


def _docstring_args(doc: str) -> dict[str, str]:
    helps: dict[str, str] = {}
    current = None
    for line in inspect.cleandoc(doc).splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            helps[current] = match.group(2).replace("``", "")
        elif current and line.startswith("        "):
            helps[current] += " " + line.strip().replace("``", "")
        else:
            current = None
    return helps


def _field_annotations(config_class: type) -> dict[str, Any]:
    annotations: dict[str, Any] = {f.name: f.type for f in DEQ_FIELDS}  # the table's; a subclass adds its own
    for cls in reversed(config_class.__mro__):
        if isinstance(cls, type) and issubclass(cls, DEQConfig) and cls is not DEQConfig:
            annotations.update(inspect.get_annotations(cls, eval_str=True))
    return annotations


def _flag_value_type(annotation: Any) -> type:
    """The flag type of a config field annotation (``X | None`` is ``X``; what no flag type fits: ``str``)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else str
    origin = typing.get_origin(annotation) or annotation
    return origin if origin in (bool, dict, list, int, float, str) else str


def deq_arguments_class(config_class: type = DEQConfig) -> type:
    """The dataclass of the DEQ flags of ``config_class``: one per field of ``deq_argument_names``, typed from
    its annotation (``bool``: ``--name`` / ``--no-name``; ``dict``/``list``: JSON), its help from the field
    table (or the config's docstring), its choices from the table; unset (``None``): the preset's value."""
    import json

    annotations, helps = _field_annotations(config_class), _field_help(config_class)
    fields: list[tuple[str, Any, Any]] = []
    for name in deq_argument_names(config_class):
        value_type = _flag_value_type(annotations.get(name, str))
        metadata = {"help": helps.get(name, f"the config field {name}"), "unset_default": "the preset's"}
        if value_type in (dict, list):
            metadata.update(help=metadata["help"] + " (JSON)", parse=json.loads)
        if name in DEQ_FIELD_CHOICES:
            metadata["choices"] = DEQ_FIELD_CHOICES[name]
        fields.append((name, value_type | None, dataclasses.field(default=None, metadata=metadata)))
    doc = "The DEQ flags of the training scripts (``None``: the preset's value).\n\nArgs:\n" + "".join(
        f"    {name}: {field.metadata['help'].replace('%%', '%')}\n" for name, _, field in fields
    )
    arguments_class = dataclasses.make_dataclass(
        f"{config_class.__name__}Arguments" if config_class is not DEQConfig else "DEQArguments",
        fields,
        namespace={"_argument_group_name": DEQ_GROUP, "__doc__": doc},
    )
    arguments_class.__module__ = __name__
    return arguments_class


@dataclasses.dataclass
class UnrolledWarmupArguments:
    """The unrolled warm-up of the training loop (``hf_deq.training.schedule``)."""

    _argument_group_name = DEQ_GROUP

    unrolled_warmup_steps: int = flag(
        0,
        "train the first N optimizer steps with plain backprop through unrolled iterations (grad_estimator "
        "'unrolled') before switching to the configured estimator",
        range=count_range(0),
    )
    unrolled_warmup_depth: int | None = flag(
        None, "iterations unrolled in warm-up (default grad_steps)", range=count_range(1, MAX_GRAD_STEPS)
    )


#: the DEQ flags of every training script (and of ``scripts/finetune_with_trainer.py``)
DEQArguments = deq_arguments_class()


def deq_overrides(args: Any) -> dict[str, Any]:
    """The DEQ config fields that the DEQ flags of ``args`` set."""
    values = vars(args)
    return {name: values[name] for name in DEQ_ARGUMENT_NAMES if values.get(name) is not None}


def config_overrides(args: Any) -> dict[str, Any]:
    """``--config_overrides`` and then the DEQ flags of ``args``: every config field the user set."""
    return {**(args.config_overrides or {}), **deq_overrides(args)}


@dataclasses.dataclass
class DataArguments:
    """The data flags every training script shares (a task adds its own: ``TrainingTask.arguments``)."""

    _argument_group_name = "data"

    dataset_name: str | None = flag(None, "a datasets Hub id")
    dataset_config_name: str | None = flag(None, "the dataset's configuration, e.g. wikitext-103-v1")
    max_train_samples: int | None = flag(None, "truncate the training set", range=count_range(1))
    max_eval_samples: int | None = flag(None, "truncate the evaluation set", range=count_range(1))
    dataloader_num_workers: int = flag(0, "worker processes of each dataloader", range=WORKER_RANGE)


@dataclasses.dataclass
class ModelArguments:
    """Where the model comes from: a preset or a saved model, and config fields to override."""

    _argument_group_name = "model"

    preset: str | None = flag(None, "a preset of hf_deq.list_variants() (default %(default)s)")
    model_name_or_path: str | None = flag(None, "start from a saved model (folder or Hub id) instead")
    config_overrides: dict | None = flag(
        None, "JSON object of further config fields, e.g. '{\"dropout\": 0.1}'", parse=json_object
    )


def _scheduler_names() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


@dataclasses.dataclass
class OptimizationArguments:
    """The optimiser, its schedule, the batches and steps, the precision and the threads."""

    _argument_group_name = "optimisation"

    optimizer: str = flag("adamw", "the optimiser", choices=["adamw", "sgd"])
    learning_rate: float = flag(1e-3, "peak learning rate", range=LEARNING_RATE)
    weight_decay: float = flag(
        0.0,
        "decoupled weight decay of the matrices and kernels (never biases, norms, gains)",
        range=NON_NEGATIVE,
    )
    momentum: float = flag(0.9, "SGD momentum", range=DECAY_FACTOR)
    nesterov: bool = flag(False, "Nesterov momentum (SGD)")
    adam_beta1: float = flag(0.9, "AdamW beta1", range=DECAY_FACTOR)
    adam_beta2: float = flag(0.999, "AdamW beta2", range=DECAY_FACTOR)
    adam_epsilon: float = flag(1e-8, "AdamW epsilon", range=POSITIVE)
    lr_scheduler_type: str = flag("cosine", "a transformers learning-rate schedule", choices=_scheduler_names)
    min_lr_ratio: float = flag(0.1, "final / peak learning rate of cosine_with_min_lr", range=UNIT_INTERVAL)
    num_warmup_steps: int = flag(0, "learning-rate warm-up steps", range=count_range(0))
    num_train_epochs: int = flag(1, "passes over the training set", range=count_range(1))
    max_train_steps: int | None = flag(None, "optimizer steps; overrides epochs", range=count_range(1))
    per_device_train_batch_size: int = flag(16, "training batch per process", range=count_range(1))
    per_device_eval_batch_size: int = flag(32, "evaluation batch per process", range=count_range(1))
    gradient_accumulation_steps: int = flag(1, "batches accumulated per optimizer step", range=count_range(1))
    max_grad_norm: float | None = flag(
        None, "clip the gradient norm to this (unset or 0: no clip)", range=NON_NEGATIVE
    )
    seed: int = flag(42, "seed of the weights, data order and dropout", range=SEED_RANGE)
    mixed_precision: str | None = flag(
        None,
        "default: the accelerate config's (accelerate launch --mixed_precision)",
        choices=list(MIXED_PRECISION),
    )
    max_nonfinite_steps: int = flag(
        10,
        "stop after N steps in a row with a non-finite loss, gradient or updated weight (each is skipped)",
        range=count_range(1),
    )
    torch_num_threads: int | None = flag(
        None,
        "intra-op CPU threads per process (torch.set_num_threads); default: OMP_NUM_THREADS if set, else the "
        "CPUs other processes leave free, re-checked every few seconds",
        range=THREAD_RANGE,
    )


@dataclasses.dataclass
class OutputArguments:
    """Where the run writes, its checkpoints, logging, evaluation and probes. ``resume_checkpoint`` is no flag:
    the checkpoint folder that ``--resume_from_checkpoint`` resolves to (set by ``check_training_args``)."""

    _argument_group_name = "output"

    output_dir: str | None = flag(
        None, "where the model, checkpoints and results go; required by the training scripts (no default)"
    )
    overwrite_output_dir: bool = flag(
        False,
        "remove what an earlier run left in --output_dir (its checkpoints, model and results files; nothing "
        "else) and write this run there",
    )
    checkpointing_steps: str | None = flag(None, "save a checkpoint every N steps, or 'epoch'")
    resume_from_checkpoint: str | None = flag(None, "a checkpoint folder, or 'latest' in --output_dir")
    with_tracking: bool = flag(False, "log to the trackers of --report_to")
    report_to: str = flag(
        "tensorboard",
        "accelerate trackers (tensorboard, wandb, ... or all); TensorBoard writes into --output_dir",
    )
    logging_steps: int = flag(10, "log the training window every N steps", range=count_range(1))
    log_file: str | None = flag(
        None,
        "append one JSON line per optimizer step (step, loss, skipped steps) and a final one with the "
        "weights' SHA-256; process i > 0 writes <log_file>.rank<i>",
    )
    eval_steps: int | None = flag(
        None, "evaluate every N steps (then not at each epoch's end)", range=count_range(1)
    )
    eval_every_epochs: int | None = flag(
        None,
        "evaluate every N epochs (default 1 without --eval_steps, none with it; always at the end)",
        range=count_range(1),
    )
    probe_steps: int = flag(
        0,
        "every N optimizer steps, measure on a fixed probe batch (the first validation examples) the cosine "
        "and relative error of the estimator's gradient against the exact implicit one (grad_alignment_cosine, "
        "grad_alignment_relative_error, probe_time: logged, in log_history.json and all_results.json; not "
        "training time); 0: off",
        range=count_range(0),
    )
    probe_contractivity: bool = flag(
        False,
        "with --probe_steps, also log the spectral radius of df/dz at the equilibrium "
        "(spectral_radius_mean, spectral_radius_max)",
    )
    disable_tqdm: bool = flag(False, "no progress bar")
    resume_checkpoint: Path | None = flag(None, "the resolved --resume_from_checkpoint", flag=False)


@functools.cache
def _training_arguments_class(task_class: type[TrainingTask]) -> type:
    parts = [DataArguments, *([task_class.arguments] if task_class.arguments is not None else [])]
    parts += [
        ModelArguments,
        DEQArguments,
        UnrolledWarmupArguments,
        OptimizationArguments,
        OutputArguments,
        HubArguments,
    ]
    return merged_dataclass(
        f"{task_class.__name__.removesuffix('Task')}Arguments",
        parts,
        module=task_class.__module__,
        defaults={"preset": task_class.default_preset, **task_class.defaults},
        helps={"dataset_name": task_class.dataset_help},
    )


def training_arguments_class(task: TrainingTask) -> type:
    """The dataclass of ``task``'s training flags: the shared data flags, the task's own, the model, DEQ,
    optimisation, output and Hub flags, with the task's defaults; ``train(task, args)`` takes an instance."""
    return _training_arguments_class(type(task))


def training_parser(
    task: TrainingTask, script: str | None = None, description: str | None = None
) -> FlagParser:
    """The ``FlagParser`` of ``task``'s training flags with ``--config FILE`` (``script``: its ``prog`` and the
    name a recipe's ``_script`` must give; ``description``: the text of ``--help``)."""
    return FlagParser(
        training_arguments_class(task),
        config_file=True,
        script=script,
        prog=script,
        usage="%(prog)s [-h] [--config JSON] [options]",
        description=description,
    )


# -- checks at parse time ---------------------------------------------------------------------------------------
def config_error_flag(args: Any, field: str | None) -> str:
    """The flag of ``args`` that set config field ``field``: its DEQ flag, else ``--config_overrides``, else
    where the config came from (``--preset`` / ``--model_name_or_path``)."""
    if field in DEQ_ARGUMENT_NAMES and vars(args).get(field) is not None:
        return f"--{field}"
    if field is not None and field in (args.config_overrides or {}):
        return "--config_overrides"
    if args.config_overrides and field is None:
        return "--config_overrides"
    return "--model_name_or_path" if args.model_name_or_path is not None else "--preset"


def _check_preset_family(preset: str, task: TrainingTask) -> None:
    """Raise ``FlagError`` when ``preset`` is unknown or of another family than ``task``'s."""
    from ..variants import get_variant, list_variants

    try:
        variant = get_variant(preset)
    except ValueError as err:
        raise FlagError("preset", preset, str(err)) from None
    model_type = getattr(variant.config_class, "model_type", None)
    if model_type != task.model_type:
        own = [n for n in list_variants() if get_variant(n).config_class.model_type == task.model_type]
        raise FlagError(
            "preset",
            preset,
            f"{preset!r} is a {model_type} preset; this script trains {task.model_type} models: {own}",
        )


def check_model_config(args: Any, task: TrainingTask) -> None:
    """Build the model config of ``args`` (``--preset``, or a local ``--model_name_or_path``, and every
    override) for ``task``, so that a bad value stops the script now: ``FlagError`` naming its flag. A Hub
    model's config is checked when it is loaded."""
    from ..hub import missing_local_model_dir
    from ..variants import create_config

    fields, path = config_overrides(args), args.model_name_or_path
    if path is not None and (problem := missing_local_model_dir(path)):
        raise FlagError("model_name_or_path", path, problem)
    try:
        if path is None:
            _check_preset_family(args.preset, task)
            create_config(args.preset, **fields)
        elif (Path(path) / "config.json").is_file():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path, **fields)
            if config.model_type != task.model_type:
                raise FlagError(
                    "model_name_or_path",
                    path,
                    f"{path} holds a {config.model_type} model; this script trains {task.model_type} models",
                )
            if hasattr(config, "validate_deq_fields"):
                config.validate_deq_fields()
    except FlagError:
        raise
    except ValueError as err:  # DEQConfigError (field, value, allowed) or another config error
        flag_name = config_error_flag(args, getattr(err, "field", None))
        raise FlagError(flag_name, getattr(err, "value", None), str(err)) from err


def preset_config(
    preset: str,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
    model_type: str | None = None,
    preset_flag: str = "--preset",
):
    """The config of ``preset`` with ``overrides``; a bad value raises ``FlagError`` naming its flag
    (``flags[field]``, else ``--config_overrides``, else ``preset_flag``); ``model_type``: the family required."""
    from ..variants import create_config, get_variant

    try:
        variant = get_variant(preset)
    except ValueError as err:
        raise FlagError(preset_flag, preset, str(err)) from None
    if model_type is not None and getattr(variant.config_class, "model_type", None) != model_type:
        raise FlagError(preset_flag, preset, f"{preset!r} is not a {model_type} preset")
    try:
        return create_config(preset, **(overrides or {}))
    except ValueError as err:
        field = getattr(err, "field", None)
        flag_name = (flags or {}).get(field) or ("--config_overrides" if overrides else preset_flag)
        raise FlagError(flag_name, getattr(err, "value", None), str(err)) from err


def check_preset_config(
    parser: argparse.ArgumentParser,
    preset: str,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
    model_type: str | None = None,
    preset_flag: str = "--preset",
):
    """``preset_config(preset, overrides, flags, model_type, preset_flag)`` with its refusal as ``parser``'s one
    ``error:`` line (for a script's own parser); returns the config."""
    with refusing(parser):
        return preset_config(preset, overrides, flags, model_type, preset_flag)


def _check_switches(args: Any) -> None:
    """The flags that only make sense together (``FlagError`` on the first that does not)."""
    if args.optimizer == "sgd" and args.nesterov and args.momentum == 0:
        raise FlagError("nesterov", True, "Nesterov momentum needs --momentum > 0, got 0")
    steps = args.checkpointing_steps
    if (
        steps is not None
        and steps != "epoch"
        and not (steps.isascii() and steps.isdigit() and int(steps) >= 1)
    ):
        raise FlagError("checkpointing_steps", steps, f"must be a positive integer or 'epoch', got {steps!r}")
    if args.probe_contractivity and not args.probe_steps:
        raise FlagError(
            "probe_contractivity", True, "it measures at the --probe_steps probes; set --probe_steps N"
        )
    if (args.checkpointing_steps or args.resume_from_checkpoint) and args.output_dir is None:
        raise FlagError("output_dir", None, "--checkpointing_steps and --resume_from_checkpoint need it")


def _check_output_dir(args: Any) -> None:
    """``--output_dir`` is usable, free, and holds no earlier run unless resumed or overwritten."""
    out = args.output_dir
    if out is None:
        return
    if problem := output_dir_problem(out):
        raise FlagError("output_dir", out, problem)
    # (only rank 0 of a multi-process job looks: the other ranks would see the lock their own rank 0 took)
    if os.environ.get("RANK", "0") == "0" and (holder := OutputDirLock.holder(out)):
        raise FlagError("output_dir", out, f"{out} is in use by another run ({holder})")
    if args.resume_from_checkpoint is not None or args.overwrite_output_dir:
        return
    if holds_a_model(out):
        raise FlagError(
            "output_dir",
            out,
            f"{out} already holds a model; pass --overwrite_output_dir to replace it or --resume_from_checkpoint "
            "to continue that run",
        )
    if found := list_checkpoints(out):
        names = found[0].name if len(found) == 1 else f"{found[0].name} ... {found[-1].name}"
        raise FlagError(
            "output_dir",
            out,
            f"{out} holds {len(found)} checkpoint(s) of an earlier run ({names}); pass --resume_from_checkpoint "
            "latest to continue it or --overwrite_output_dir to remove them",
        )


def resumed_checkpoint(args: Any) -> Path | None:
    """The checkpoint folder ``--resume_from_checkpoint`` names (``None`` without it), its state file read so
    that a corrupt one is refused before data loads."""
    if args.resume_from_checkpoint is None:
        return None
    try:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        TrainingState.read(checkpoint)
    except (CheckpointError, TrainingStateError) as err:
        raise FlagError("resume_from_checkpoint", args.resume_from_checkpoint, str(err)) from None
    return checkpoint


def check_training_args(args: Any, task: TrainingTask) -> Any:
    """Every check of ``args`` that needs no data: flag ranges, the output folder, the checkpoint to resume,
    the task's own data flags, the model config and the Hub repo id. Raises ``FlagError``; returns a new
    arguments object with the resolved values (``resume_checkpoint``, the task's), ``args`` left as it is."""
    from ..hub import check_hub_args

    check_flag_ranges(args)
    _check_switches(args)
    _check_output_dir(args)
    resolved = dataclasses.replace(args, resume_checkpoint=resumed_checkpoint(args))
    resolved = dataclasses.replace(resolved, **task.check_args(resolved))
    check_model_config(resolved, task)
    try:
        check_hub_args(resolved)
    except InvalidRepoIdError as err:
        raise FlagError("hub_model_id", resolved.hub_model_id, str(err)) from None
    return resolved


def parse_args(
    task: TrainingTask,
    argv: list[str] | None = None,
    script: str | None = None,
    description: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Any:
    """``task``'s training arguments (``training_arguments_class(task)``) parsed from ``argv`` (with
    ``--config FILE``) and checked: a bad value is one ``error:`` line naming its flag, exit status 2, before
    any data is loaded. ``defaults`` replace the flags' own defaults (a ``--config`` file and the command line
    still win); ``script`` names the script in messages, ``description`` heads its ``--help``."""
    parser = training_parser(task, script, description)
    if defaults:
        parser.set_defaults(**defaults)
    (args,) = parser.parse_into_dataclasses(argv)
    with parser.refusing():
        return check_training_args(args, task)


__all__ = [
    "DEQ_ARGUMENT_NAMES",
    "DEQArguments",
    "DataArguments",
    "DefaultsHelpFormatter",
    "FlagParser",
    "ModelArguments",
    "OptimizationArguments",
    "OutputArguments",
    "check_model_config",
    "check_preset_config",
    "check_training_args",
    "config_error_flag",
    "config_overrides",
    "deq_argument_names",
    "deq_arguments_class",
    "deq_overrides",
    "json_object",
    "UnrolledWarmupArguments",
    "parse_args",
    "preset_config",
    "resumed_checkpoint",
    "training_arguments_class",
    "training_parser",
]
