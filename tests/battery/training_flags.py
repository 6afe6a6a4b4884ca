"""What each training flag accepts: the battery's oracle for the scripts' flags and ``--config`` recipe keys.

``valid(value)`` of a flag is ``True`` (a correct run takes it as given), ``False`` (it must be refused) or
``None`` (either is right: a legal but odd value, such as a learning rate of 1e308)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: a count at least this large is "huge" (10**12 solver iterations, worker processes, ...)
HUGE = 10**12


@dataclass(frozen=True)
class Flag:
    type: str  # "int", "float" or "choice"
    valid: Callable[[Any], bool | None]
    scripts: tuple[str, ...] = ("mdeq", "lm")


def count(low: int, huge: bool | None = None) -> Callable[[int], bool | None]:
    """An integer ``>= low``; ``huge`` says whether a huge one (>= ``HUGE``) is valid (``None``: either: a
    step count or interval past what a float holds exactly, 2**53, may be refused with its bound)."""

    def valid(value: int) -> bool | None:
        if value < low:
            return False
        return huge if value >= HUGE else True

    return valid


def seed(value: int) -> bool:
    """numpy, which Accelerate and datasets seed, takes ``0 <= seed < 2**32``."""
    return 0 <= value < 2**32


def number(low: float, high: float = math.inf, low_open=False, high_open=False, huge=None):
    """A finite number in the interval; a huge one (>= 1e12, still finite) is valid when ``huge`` is True,
    refused when False, either when None (``high`` bounded intervals refuse it anyway)."""

    def valid(value: float) -> bool | None:
        if not math.isfinite(value):
            return False
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            return False
        return huge if value >= 1e12 else True

    return valid


def choice(*choices: str) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _schedulers() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


FLAGS: dict[str, Flag] = {
    # data
    "max_train_samples": Flag("int", count(1)),
    "max_eval_samples": Flag("int", count(1)),
    "dataloader_num_workers": Flag("int", count(0, huge=False)),
    "train_val_split": Flag("float", number(0, 1, low_open=True, high_open=True), ("mdeq",)),
    "split_seed": Flag("int", seed, ("mdeq",)),
    "augment": Flag("choice", choice("none", "crop", "crop_flip"), ("mdeq",)),
    "validation_split_percentage": Flag("float", number(0, 100, low_open=True, high_open=True), ("lm",)),
    "block_size": Flag("int", count(2, huge=False), ("lm",)),
    "preprocessing_num_workers": Flag("int", count(0, huge=False), ("lm",)),  # 0: no worker processes
    "tokenizer_vocab_size": Flag("int", count(1, huge=None), ("lm",)),
    "train_tokenizer": Flag("choice", choice("char", "word", "bpe"), ("lm",)),
    # DEQ (the config's own checks)
    "solver": Flag("choice", choice("anderson", "broyden", "fixed_point")),
    "solver_max_iter": Flag("int", count(1, huge=False)),
    "solver_eval_max_iter": Flag("int", count(1, huge=False)),
    "solver_tol": Flag("float", number(0)),
    "solver_stop_mode": Flag("choice", choice("rel", "abs")),
    "solver_on_failure": Flag("choice", choice("warn", "raise", "ignore")),
    "grad_estimator": Flag("choice", choice("implicit", "upg", "npg", "one_step", "unrolled")),
    "grad_steps": Flag("int", count(1, huge=False)),
    "grad_damping": Flag("float", number(0, 1, low_open=True)),
    "grad_solver": Flag("choice", choice("anderson", "broyden", "fixed_point", "gmres")),
    "grad_max_iter": Flag("int", count(1, huge=False)),
    "grad_tol": Flag("float", number(0)),
    "jacobian_reg_weight": Flag("float", number(0)),
    "unrolled_warmup_steps": Flag("int", count(0)),
    "unrolled_warmup_depth": Flag("int", count(1, huge=False)),
    # optimisation
    "optimizer": Flag("choice", choice("adamw", "sgd")),
    "learning_rate": Flag("float", number(0, low_open=True)),
    "weight_decay": Flag("float", number(0)),
    "momentum": Flag("float", number(0, 1, high_open=True)),
    "adam_beta1": Flag("float", number(0, 1, high_open=True)),
    "adam_beta2": Flag("float", number(0, 1, high_open=True)),
    "adam_epsilon": Flag("float", lambda v: None if v == 0 else number(0)(v)),
    "lr_scheduler_type": Flag("choice", lambda v: v in _schedulers()),
    "min_lr_ratio": Flag("float", number(0, 1)),
    "num_warmup_steps": Flag("int", count(0)),
    "num_train_epochs": Flag("int", count(1)),
    "max_train_steps": Flag("int", count(1)),
    "per_device_train_batch_size": Flag("int", count(1)),
    "per_device_eval_batch_size": Flag("int", count(1)),
    "gradient_accumulation_steps": Flag("int", count(1, huge=None)),
    "max_grad_norm": Flag("float", number(0)),
    "seed": Flag("int", seed),
    "mixed_precision": Flag("choice", choice("no", "fp16", "bf16")),
    "max_nonfinite_steps": Flag("int", count(1)),
    "torch_num_threads": Flag("int", count(1, huge=False)),
    # output
    "logging_steps": Flag("int", count(1)),
    "eval_steps": Flag("int", count(1)),
    "probe_steps": Flag("int", count(0)),
    "eval_every_epochs": Flag("int", count(1)),
    "hub_strategy": Flag("choice", choice("end", "checkpoint")),
}


def parse_number(flag: Flag, text: str) -> tuple[bool, Any]:
    """``(ok, value)``: what argparse makes of ``text`` for ``flag`` (``int()`` / ``float()``, as argparse)."""
    if flag.type == "choice":
        return True, text
    try:
        return True, (int if flag.type == "int" else float)(text)
    except ValueError:
        return False, None


def json_value(flag: Flag, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether a ``--config`` recipe may give ``value`` for ``flag``, and the value the run must
    get. Numbers must be JSON numbers (a string is read as on the command line; true/false are not numbers)."""
    if isinstance(value, str):
        return parse_number(flag, value)
    if flag.type == "choice" or isinstance(value, bool):
        return False, None
    if flag.type == "int":
        return (True, value) if isinstance(value, int) else (False, None)
    return (True, float(value)) if isinstance(value, (int, float)) else (False, None)
