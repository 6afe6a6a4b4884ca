"""What every numeric training flag accepts: one small vocabulary of ranges (``Range``), the table of the shared
flags (``FLAG_RANGES``; a task declares its data flags in ``TrainingTask.flag_ranges``), and the check that
answers a value outside its range, NaN and ±inf included, with one ``error:`` line naming the flag, the value and
the range."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from ..configuration_deq import MAX_GRAD_STEPS


@dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: ``low``/``high`` bounds (``None``: unbounded; ``*_open``: excluded),
    finite always, ``integer`` for the counts. ``value in r`` is false for NaN and ±inf, whose comparisons
    ``x < 0``-style checks let through."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    #: how the range is said in an error, when ``describe()``'s wording would hide what matters
    text: str | None = None

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(
            value
        ):  # (an int is finite, and may not fit a float)
            return False
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """e.g. ``an integer >= 1``, ``> 0 and finite``, ``in [0, 1)``."""
        if self.text is not None:
            return self.text
        if self.integer and self.high == MAX_COUNT and self.low is not None:
            return f"an integer >= {self.low:d} (and < 2**53)"
        low, high = (
            None if b is None else f"{b:d}" if self.integer else f"{b:g}" for b in (self.low, self.high)
        )
        if low is not None and high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{low}, {high}{right}"
        elif low is not None:
            text = f"{'>' if self.low_open else '>='} {low}"
        elif high is not None:
            text = f"{'<' if self.high_open else '<='} {high}"
        else:
            text = ""
        if self.integer:
            return f"an integer {text}".rstrip()
        if low is not None and high is not None:
            return text
        return f"{text} and finite" if text else "a finite number"


#: the largest count: the schedules and the step arithmetic go through floats, exact up to 2**53
MAX_COUNT = 2**53 - 1


def count_range(low: int, high: int = MAX_COUNT) -> Range:
    """The integers ``low..high``."""
    return Range(low, high, integer=True)


#: seeds: numpy's global generator (``accelerate.utils.set_seed``) takes 32 bits
SEED_RANGE = count_range(0, 2**32 - 1)
#: torch.set_num_threads overflows past C int; more threads than this is a typo
THREAD_RANGE = count_range(1, 4096)
#: worker processes of a dataloader or a ``datasets.map``: more than this is a typo that would fork-bomb
WORKER_RANGE = count_range(0, 1024)
POSITIVE = Range(0, low_open=True)
#: the optimizers scale float32 tensors by it: more than float32's largest value cannot be applied
LEARNING_RATE = Range(
    0, 3.4028234663852886e38, low_open=True, text="> 0 and at most 3.4e38 (float32's largest)"
)
NON_NEGATIVE = Range(0)
UNIT_INTERVAL = Range(0, 1)
#: Adam betas and SGD momentum: a decay factor in [0, 1)
DECAY_FACTOR = Range(0, 1, high_open=True)

#: every numeric training flag and what it accepts (a task adds its own data flags: ``TrainingTask.flag_ranges``);
#: ``None`` values (unset) are always fine
FLAG_RANGES: dict[str, Range] = {
    "learning_rate": LEARNING_RATE,
    "weight_decay": NON_NEGATIVE,
    "momentum": DECAY_FACTOR,
    "adam_beta1": DECAY_FACTOR,
    "adam_beta2": DECAY_FACTOR,
    "adam_epsilon": POSITIVE,
    "min_lr_ratio": UNIT_INTERVAL,
    "max_grad_norm": NON_NEGATIVE,
    "seed": SEED_RANGE,
    "torch_num_threads": THREAD_RANGE,
    "dataloader_num_workers": WORKER_RANGE,
    "num_warmup_steps": count_range(0),
    "unrolled_warmup_steps": count_range(0),
    "unrolled_warmup_depth": count_range(1, MAX_GRAD_STEPS),  # the warm-up's grad_steps of "unrolled"
    "num_train_epochs": count_range(1),
    "max_train_steps": count_range(1),
    "max_train_samples": count_range(1),
    "max_eval_samples": count_range(1),
    "per_device_train_batch_size": count_range(1),
    "per_device_eval_batch_size": count_range(1),
    "gradient_accumulation_steps": count_range(1),
    "max_nonfinite_steps": count_range(1),
    "logging_steps": count_range(1),
    "eval_steps": count_range(1),
    "probe_steps": count_range(0),
    "eval_every_epochs": count_range(1),
}


def range_problem(value: Any, allowed: Range) -> str | None:
    """What is wrong with ``value`` outside ``allowed`` (``None`` when ``value`` is fine or unset)."""
    if value is None or value in allowed:
        return None
    return f"must be {allowed.describe()}, got {value!r}"


def range_error(name: str, value: Any, allowed: Range) -> str | None:
    """The ``error:`` text of ``--name value`` outside ``allowed`` (``None`` when ``value`` is fine or unset)."""
    problem = range_problem(value, allowed)
    return None if problem is None else f"argument --{name}: {problem}"


def check_flag_ranges(args: Any, ranges: dict[str, Range]) -> None:
    """Raise ``FlagError`` (naming the flag, its value and the range) on the first flag of ``ranges`` that
    ``args`` (a typed arguments object) sets outside its range."""
    from .errors import FlagError

    values = vars(args)
    for name, allowed in ranges.items():
        if (problem := range_problem(values.get(name), allowed)) is not None:
            raise FlagError(name, values[name], problem)


__all__ = [
    "DECAY_FACTOR",
    "FLAG_RANGES",
    "LEARNING_RATE",
    "MAX_COUNT",
    "NON_NEGATIVE",
    "POSITIVE",
    "SEED_RANGE",
    "THREAD_RANGE",
    "UNIT_INTERVAL",
    "WORKER_RANGE",
    "Range",
    "check_flag_ranges",
    "count_range",
    "range_error",
    "range_problem",
]


def count_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated integers >= 1 (solver budgets, unroll lengths), e.g. ``2,4,8``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values
