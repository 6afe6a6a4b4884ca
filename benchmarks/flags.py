"""Comma-separated flag values of the benchmark and developer scripts. Their flags are typed dataclasses parsed
by ``hf_deq.training.flags.FlagParser`` (the library's one argument system: help with every default, the
``error:`` line, ranges); what is left here is theirs alone: a flag naming a subset of a list as ``a,b,c``."""

from __future__ import annotations

from collections.abc import Iterable


def split_commas(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the values of a comma-separated flag, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def outside(values: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The ``values`` not in ``allowed``, in order."""
    allowed = set(allowed)
    return [v for v in values if v not in allowed]
