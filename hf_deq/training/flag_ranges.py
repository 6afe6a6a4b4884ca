"""What every numeric flag accepts: one small vocabulary of ranges (``Range``), declared on the flag's own field
(``flag(default, help, range=...)``, next to its type, default and help; ``flag_ranges(arguments)`` reads them
back as a table), and the one check (``check_flag_ranges``, run by ``FlagParser`` and by
``check_training_args``) that answers a value outside its range, NaN and ±inf included, with one ``error:`` line
naming the flag, the value and the range."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any


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


def range_problem(value: Any, allowed: Range) -> str | None:
    """What is wrong with ``value`` outside ``allowed`` (``None`` when ``value`` is fine or unset)."""
    if value is None or value in allowed:
        return None
    return f"must be {allowed.describe()}, got {value!r}"


def flag_ranges(arguments: Any) -> dict[str, Range]:
    """``{name: range}`` of the fields of ``arguments`` (a dataclass or an instance of one) declared with a
    ``range`` (``flag(..., range=...)``), in field order."""
    return {
        f.name: f.metadata["range"]
        for f in dataclasses.fields(arguments)
        if f.metadata.get("range") is not None
    }


def check_flag_ranges(args: Any) -> None:
    """Raise ``FlagError`` (naming the flag, its value and the range) on the first field of ``args`` (a
    dataclass instance: parsed by ``FlagParser`` or built directly) whose value lies outside its declared
    ``range``."""
    from .errors import FlagError

    for name, allowed in flag_ranges(args).items():
        value = getattr(args, name)
        if (problem := range_problem(value, allowed)) is not None:
            raise FlagError(name, value, problem)


__all__ = [
    "DECAY_FACTOR",
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
    "flag_ranges",
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
