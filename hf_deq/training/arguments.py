"""The flag vocabulary of every training script: model, DEQ, optimisation and output flags, ``--config FILE``
recipes, and the checks done at parse time (before any data is loaded), each failing like argparse does with a
bad choice: one ``error:`` line naming the flag, exit status 2.

The DEQ flags are derived from ``DEQConfig.SOLVER_FIELDS`` / ``GRAD_FIELDS`` (+ ``jacobian_reg_weight``): a new
field in those groups gets its flag, typed from its annotation and described by the ``Args:`` entry of the
config's docstring."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..configuration_deq import DEQConfig
from ..deq_fields import DEQ_FIELDS
from .checkpoints import (
    CheckpointError,
    OutputDirLock,
    holds_a_model,
    list_checkpoints,
    output_dir_problem,
    resolve_checkpoint,
)
from .flag_ranges import FLAG_RANGES, check_flag_ranges
from .state import TrainingState, TrainingStateError

if TYPE_CHECKING:
    from .task import TrainingTask


def deq_argument_names(config_class: type = DEQConfig) -> tuple[str, ...]:
    """The config fields that have a DEQ flag: the solver and estimator groups, and the Jacobian weight."""
    return (*config_class.SOLVER_FIELDS, *config_class.GRAD_FIELDS, "jacobian_reg_weight")


#: the DEQ flags of every training script
DEQ_ARGUMENT_NAMES = deq_argument_names()

MIXED_PRECISION = ("no", "fp16", "bf16")


#: choices of the DEQ fields that have some, from the field table (the rest are checked by the config at parse time)
DEQ_FIELD_CHOICES = {f.name: f.choices for f in DEQ_FIELDS if f.choices is not None}


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with every flag's default: ``(default: X)`` after its text, unless the text already says what
    its default is; an unset flag shows its action's ``unset_default`` (e.g. "the preset's"), else "none"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        unset = getattr(action, "unset_default", "none")
        return f"{text} (default: {unset if action.default is None else '%(default)s'})"


def json_object(text: str) -> dict[str, Any]:
    """``type=`` of the JSON flags: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


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


def _flag_type(annotation: Any) -> tuple[type | None, bool]:
    """``(type, is_bool)`` of a config field annotation (``X | None`` is ``X``)."""
    if isinstance(annotation, (types.UnionType,)) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        return None, True
    if origin in (dict, list):
        return json.loads, False
    if origin in (int, float, str):
        return origin, False
    return str, False


def _field_annotations(config_class: type) -> dict[str, Any]:
    annotations: dict[str, Any] = {f.name: f.type for f in DEQ_FIELDS}  # the table's; a subclass adds its own
    for cls in reversed(config_class.__mro__):
        if isinstance(cls, type) and issubclass(cls, DEQConfig) and cls is not DEQConfig:
            annotations.update(inspect.get_annotations(cls, eval_str=True))
    return annotations


def add_deq_arguments(parser: argparse.ArgumentParser, config_class: type = DEQConfig) -> None:
    """A flag for every solver and estimator field of ``config_class``, typed from its annotation (``bool``:
    ``--name`` / ``--no-name``; ``dict``/``list``: JSON), with the docstring's text as help. Unset flags keep the
    preset's value."""
    group = parser.add_argument_group("DEQ solver and gradient estimator (default: the preset's)")
    annotations = _field_annotations(config_class)
    helps = _field_help(config_class)
    for name in deq_argument_names(config_class):
        flag_type, is_bool = _flag_type(annotations.get(name, str))
        text = helps.get(name, f"the config field {name}")
        if is_bool:
            action = group.add_argument(
                f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=text
            )
            action.unset_default = "the preset's"  # what --help shows as its default
            continue
        choices = DEQ_FIELD_CHOICES[name]() if name in DEQ_FIELD_CHOICES else None
        if flag_type is json.loads:
            text += " (JSON)"
        action = group.add_argument(f"--{name}", type=flag_type, choices=choices, default=None, help=text)
        action.unset_default = "the preset's"
    group.add_argument(
        "--unrolled_warmup_steps",
        type=int,
        default=0,
        help="train the first N optimizer steps with plain backprop through unrolled iterations (grad_estimator "
        "'unrolled') before switching to the configured estimator",
    )
    group.add_argument(
        "--unrolled_warmup_depth",
        type=int,
        default=None,
        help="iterations unrolled in warm-up (default grad_steps)",
    )


def deq_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The DEQ config fields set by flags."""
    return {name: getattr(args, name) for name in DEQ_ARGUMENT_NAMES if getattr(args, name, None) is not None}


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--config_overrides`` and then the DEQ flags: every config field the user set."""
    return {**(args.config_overrides or {}), **deq_overrides(args)}


def add_training_arguments(parser: argparse.ArgumentParser, task: TrainingTask) -> None:
    """The flags every training script shares (``task`` adds its data flags and its defaults)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help=task.dataset_help)
    data.add_argument(
        "--dataset_config_name", default=None, help="the dataset's configuration, e.g. wikitext-103-v1"
    )
    data.add_argument("--max_train_samples", type=int, default=None, help="truncate the training set")
    data.add_argument("--max_eval_samples", type=int, default=None, help="truncate the evaluation set")
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="worker processes of each dataloader"
    )
    task.add_arguments(parser)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        default=task.default_preset,
        help="a preset of hf_deq.list_variants() (default %(default)s)",
    )
    model.add_argument(
        "--model_name_or_path", default=None, help="start from a saved model (folder or Hub id) instead"
    )
    model.add_argument(
        "--config_overrides",
        type=json_object,
        default=None,
        help="JSON object of further config fields, e.g. '{\"dropout\": 0.1}'",
    )
    add_deq_arguments(parser)

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="the optimiser")
    opt.add_argument("--learning_rate", type=float, default=1e-3, help="peak learning rate")
    opt.add_argument(
        "--weight_decay",
        type=float,
        default=0.0,
        help="decoupled weight decay of the matrices and kernels (never biases, norms, gains)",
    )
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    opt.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1")
    opt.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2")
    opt.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon")
    opt.add_argument(
        "--lr_scheduler_type",
        choices=_scheduler_names(),
        default="cosine",
        help="a transformers learning-rate schedule",
    )
    opt.add_argument(
        "--min_lr_ratio", type=float, default=0.1, help="final / peak learning rate of cosine_with_min_lr"
    )
    opt.add_argument("--num_warmup_steps", type=int, default=0, help="learning-rate warm-up steps")
    opt.add_argument("--num_train_epochs", type=int, default=1, help="passes over the training set")
    opt.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides epochs")
    opt.add_argument("--per_device_train_batch_size", type=int, default=16, help="training batch per process")
    opt.add_argument(
        "--per_device_eval_batch_size", type=int, default=32, help="evaluation batch per process"
    )
    opt.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="batches accumulated per optimizer step"
    )
    opt.add_argument(
        "--max_grad_norm",
        type=float,
        default=None,
        help="clip the gradient norm to this (unset or 0: no clip)",
    )
    opt.add_argument("--seed", type=int, default=42, help="seed of the weights, data order and dropout")
    opt.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        default=None,
        help="default: the accelerate config's (accelerate launch --mixed_precision)",
    )
    opt.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="stop after N steps in a row with a non-finite loss, gradient or updated weight (each is skipped)",
    )
    opt.add_argument(
        "--torch_num_threads",
        type=int,
        default=None,
        help="intra-op CPU threads per process (torch.set_num_threads); default: OMP_NUM_THREADS if set, else the "
        "CPUs other processes leave free, re-checked every few seconds",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--output_dir",
        default=None,
        help="where the model, checkpoints and results go; required by the training scripts (no default)",
    )
    out.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="remove what an earlier run left in --output_dir (its checkpoints, model and results files; nothing "
        "else) and write this run there",
    )
    out.add_argument(
        "--checkpointing_steps", default=None, help="save a checkpoint every N steps, or 'epoch'"
    )
    out.add_argument(
        "--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest' in --output_dir"
    )
    out.add_argument("--with_tracking", action="store_true", help="log to the trackers of --report_to")
    out.add_argument(
        "--report_to",
        default="tensorboard",
        help="accelerate trackers (tensorboard, wandb, ... or all); TensorBoard writes into --output_dir",
    )
    out.add_argument("--logging_steps", type=int, default=10, help="log the training window every N steps")
    out.add_argument(
        "--log_file",
        default=None,
        help="append one JSON line per optimizer step (step, loss, skipped steps) and a final one with the "
        "weights' SHA-256; process i > 0 writes <log_file>.rank<i>",
    )
    out.add_argument(
        "--eval_steps", type=int, default=None, help="evaluate every N steps (then not at each epoch's end)"
    )
    out.add_argument(
        "--eval_every_epochs",
        type=int,
        default=None,
        help="evaluate every N epochs (default 1 without --eval_steps, none with it; always at the end)",
    )
    out.add_argument(
        "--probe_steps",
        type=int,
        default=0,
        help="every N optimizer steps, measure on a fixed probe batch (the first validation examples) the cosine "
        "and relative error of the estimator's gradient against the exact implicit one (grad_alignment_cosine, "
        "grad_alignment_relative_error, probe_time: logged, in log_history.json and all_results.json; not "
        "training time); 0: off",
    )
    out.add_argument(
        "--probe_contractivity",
        action="store_true",
        help="with --probe_steps, also log the spectral radius of df/dz at the equilibrium "
        "(spectral_radius_mean, spectral_radius_max)",
    )
    out.add_argument("--disable_tqdm", action="store_true", help="no progress bar")
    from ..hub import add_hub_arguments

    add_hub_arguments(parser)
    parser.set_defaults(**task.defaults)


def _scheduler_names() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


# -- --config FILE ----------------------------------------------------------------------------------------------
def read_config_file(parser: argparse.ArgumentParser, path: str | os.PathLike, script: str) -> dict[str, Any]:
    """The flag values of a ``--config`` JSON file (keys are flag names without dashes; ``_``-keys are notes;
    ``_script``, when given, must name ``script``), each checked like its flag (type, choices)."""
    where = f"--config {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of flag values, got {type(data).__name__}")
    meant_for = data.get("_script")
    if meant_for is not None and meant_for != script:
        raise ValueError(f"{where} is a config for {meant_for}, not for {script}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if key not in actions:
            raise ValueError(
                f"{where}: unknown key {key!r}; the keys are the flags of {script}: {sorted(actions)}"
            )
        values[key] = _config_value(actions[key], key, value, where)
    return values


def _config_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """``value`` checked and converted as the command line would do for ``--key``."""
    switches = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
    if isinstance(action, switches):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key!r} is a switch, so it takes true or false, got {value!r}")
        return value
    if value is None:  # null: the flag left unset, which a flag with a default cannot be
        if action.default is not None:
            raise ValueError(
                f"{where}: {key!r} is null (None), but --{key} cannot be unset; leave the key out for its "
                f"default {action.default!r}"
            )
        return None
    structured = action.type in (json.loads, json_object)
    if isinstance(value, bool) or (isinstance(value, (list, dict)) and not structured):
        raise ValueError(f"{where}: {key!r} got {value!r}, which --{key} does not take")
    if structured:
        if action.type is json_object and not isinstance(value, dict):
            raise ValueError(f"{where}: {key!r} must be a JSON object, got {value!r}")
        return value
    if action.type is None and isinstance(value, (int, float)):  # a string flag such as checkpointing_steps
        value = str(value)
    if action.type is int and not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    if action.type is float and isinstance(value, (int, float)):
        value = float(value)
    elif isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {key!r} got {value!r}: {err}") from None
    elif action.type is float:
        raise ValueError(f"{where}: {key!r} must be a number, got {value!r}")
    if value is not None and action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: {key!r} must be one of {list(action.choices)}, got {value!r}")
    return value


def parse_args_with_config_file(
    parser: argparse.ArgumentParser, argv: list[str] | None, script: str
) -> argparse.Namespace:
    """Parse ``argv`` with ``--config FILE`` support: the file's values are defaults, flags on the command line
    win. A bad file is a one-line ``error:`` (exit status 2)."""
    parser.add_argument(
        "--config",
        metavar="JSON",
        default=None,
        help="a JSON file of flag values (see scripts/configs/); flags on the command line override it",
    )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            parser.set_defaults(**read_config_file(parser, known.config, script))
        except ValueError as err:
            parser.error(str(err))
    return parser.parse_args(argv)


# -- checks at parse time ---------------------------------------------------------------------------------------
def config_error_flag(args: argparse.Namespace, field: str | None) -> str:
    """The flag that set config field ``field``: its DEQ flag, else ``--config_overrides``, else where the
    config came from (``--preset`` / ``--model_name_or_path``)."""
    if field in DEQ_ARGUMENT_NAMES and getattr(args, field, None) is not None:
        return f"--{field}"
    if field is not None and field in (args.config_overrides or {}):
        return "--config_overrides"
    if args.config_overrides and field is None:
        return "--config_overrides"
    return "--model_name_or_path" if args.model_name_or_path is not None else "--preset"


def check_model_config(parser: argparse.ArgumentParser, args: argparse.Namespace, task: TrainingTask) -> None:
    """Build the model config from ``--preset`` (or a local ``--model_name_or_path``) and every override, so that
    a bad value stops the script now, naming its flag. A Hub model's config is checked when it is loaded."""
    from ..hub import missing_local_model_dir
    from ..variants import create_config, get_variant, list_variants

    fields = config_overrides(args)
    if args.model_name_or_path is not None and (problem := missing_local_model_dir(args.model_name_or_path)):
        parser.error(f"argument --model_name_or_path: {problem}")
    try:
        if args.model_name_or_path is None:
            try:
                variant = get_variant(args.preset)
            except ValueError as err:
                parser.error(f"argument --preset: {err}")
            model_type = getattr(variant.config_class, "model_type", None)
            if model_type != task.model_type:
                own = [
                    n for n in list_variants() if get_variant(n).config_class.model_type == task.model_type
                ]
                parser.error(
                    f"argument --preset: {args.preset!r} is a {model_type} preset; this script trains "
                    f"{task.model_type} models: {own}"
                )
            create_config(args.preset, **fields)
        elif (Path(args.model_name_or_path) / "config.json").is_file():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(args.model_name_or_path, **fields)
            if config.model_type != task.model_type:
                parser.error(
                    f"argument --model_name_or_path: {args.model_name_or_path} holds a {config.model_type} "
                    f"model; this script trains {task.model_type} models"
                )
            if hasattr(config, "validate_deq_fields"):
                config.validate_deq_fields()
    except ValueError as err:  # DEQConfigError (field, value, allowed) or another config error
        parser.error(f"argument {config_error_flag(args, getattr(err, 'field', None))}: {err}")


def check_preset_config(
    parser: argparse.ArgumentParser,
    preset: str,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
    model_type: str | None = None,
    preset_flag: str = "--preset",
):
    """The config of ``preset`` with ``overrides``, built now so that a bad value is one ``error:`` line naming
    its flag (``flags[field]``, else ``--config_overrides``, else ``preset_flag``); returns the config."""
    from ..variants import create_config, get_variant

    try:
        variant = get_variant(preset)
    except ValueError as err:
        parser.error(f"argument {preset_flag}: {err}")
    if model_type is not None and getattr(variant.config_class, "model_type", None) != model_type:
        parser.error(f"argument {preset_flag}: {preset!r} is not a {model_type} preset")
    try:
        return create_config(preset, **(overrides or {}))
    except ValueError as err:
        field = getattr(err, "field", None)
        flag = (flags or {}).get(field) or ("--config_overrides" if overrides else preset_flag)
        parser.error(f"argument {flag}: {err}")


def check_training_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, task: TrainingTask
) -> None:
    """Every check that needs no data: flag ranges, the output folder, the checkpoint to resume, the model config,
    the Hub repo id, and the task's own data flags."""
    check_flag_ranges(parser, args, {**FLAG_RANGES, **task.flag_ranges})
    if args.optimizer == "sgd" and args.nesterov and args.momentum == 0:
        parser.error("argument --nesterov: Nesterov momentum needs --momentum > 0, got 0")
    steps = args.checkpointing_steps
    if (
        steps is not None
        and steps != "epoch"
        and not (steps.isascii() and steps.isdigit() and int(steps) >= 1)
    ):
        parser.error(f"argument --checkpointing_steps: must be a positive integer or 'epoch', got {steps!r}")
    if getattr(args, "probe_contractivity", False) and not args.probe_steps:
        parser.error(
            "argument --probe_contractivity: it measures at the --probe_steps probes; set --probe_steps N"
        )
    if (args.checkpointing_steps or args.resume_from_checkpoint) and args.output_dir is None:
        parser.error("argument --output_dir: --checkpointing_steps and --resume_from_checkpoint need it")
    if args.output_dir is not None and (problem := output_dir_problem(args.output_dir)):
        parser.error(f"argument --output_dir: {problem}")
    # (only rank 0 of a multi-process job looks: the other ranks would see the lock their own rank 0 took)
    if args.output_dir is not None and os.environ.get("RANK", "0") == "0":
        if holder := OutputDirLock.holder(args.output_dir):
            parser.error(f"argument --output_dir: {args.output_dir} is in use by another run ({holder})")
    args.resume_checkpoint = None
    if args.resume_from_checkpoint is not None:
        try:
            args.resume_checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
            TrainingState.read(args.resume_checkpoint)  # a corrupt state file: refused before data loads
        except (CheckpointError, TrainingStateError) as err:
            parser.error(f"argument --resume_from_checkpoint: {err}")
    elif args.output_dir is not None and not args.overwrite_output_dir:
        if holds_a_model(args.output_dir):
            parser.error(
                f"argument --output_dir: {args.output_dir} already holds a model; pass --overwrite_output_dir to "
                "replace it or --resume_from_checkpoint to continue that run"
            )
        if found := list_checkpoints(args.output_dir):
            names = found[0].name if len(found) == 1 else f"{found[0].name} ... {found[-1].name}"
            parser.error(
                f"argument --output_dir: {args.output_dir} holds {len(found)} checkpoint(s) of an earlier run "
                f"({names}); pass --resume_from_checkpoint latest to continue it or --overwrite_output_dir to "
                "remove them"
            )
    task.check_args(parser, args)
    check_model_config(parser, args, task)
    from ..hub import check_hub_args

    try:
        check_hub_args(args)
    except SystemExit as err:
        parser.error(f"argument {err}")


def parse_args(
    task: TrainingTask,
    argv: list[str] | None = None,
    script: str | None = None,
    description=None,
    defaults: dict[str, Any] | None = None,
):
    """The training flags of ``task`` parsed from ``argv`` (with ``--config FILE``) and checked: a bad value is
    one ``error:`` line naming its flag, exit status 2, before any data is loaded. ``defaults`` replace the
    flags' own defaults (a ``--config`` file and the command line still win)."""
    parser = argparse.ArgumentParser(
        prog=script,
        usage="%(prog)s [-h] [--config JSON] [options]",
        description=description,
        formatter_class=DefaultsHelpFormatter,
    )
    add_training_arguments(parser, task)
    if defaults:
        parser.set_defaults(**defaults)
    args = parse_args_with_config_file(parser, argv, script or parser.prog)
    check_training_args(parser, args, task)
    return args


__all__ = [
    "DEQ_ARGUMENT_NAMES",
    "DefaultsHelpFormatter",
    "add_deq_arguments",
    "deq_argument_names",
    "add_training_arguments",
    "check_model_config",
    "check_preset_config",
    "check_training_args",
    "config_error_flag",
    "config_overrides",
    "deq_overrides",
    "json_object",
    "parse_args",
    "parse_args_with_config_file",
    "read_config_file",
]
