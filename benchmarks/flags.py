"""Flag helpers shared by the benchmark and developer scripts: their flags are typed dataclasses parsed by
``transformers.HfArgumentParser`` (each script imports the parser class in one place); this module holds what
those scripts share around it: the help formatter, the parse with argparse's ``error:`` line for an unknown flag,
comma-separated flag values, and range checks that name their flag."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any


class DescriptionAndDefaultsFormatter(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """``--help`` keeps the description's line breaks (the scripts' usage examples) and shows every default
    (a required flag, which has none, says so)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """The dataclass instances ``parser`` (an ``HfArgumentParser``) fills from ``argv`` (``None``:
    ``sys.argv[1:]``); an unknown flag is argparse's one ``error:`` line (exit status 2), not a traceback."""
    *parsed, unknown = parser.parse_args_into_dataclasses(
        None if argv is None else list(argv), return_remaining_strings=True, look_for_args_file=False
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(parsed)


def parse_known_flags(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[tuple[Any, ...], list[str]]:
    """``(dataclass instances, the argument strings parser does not know)`` of ``argv``, as ``parse_known_args``."""
    *parsed, unknown = parser.parse_args_into_dataclasses(
        None if argv is None else list(argv), return_remaining_strings=True, look_for_args_file=False
    )
    return tuple(parsed), list(unknown)


def split_commas(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the values of a comma-separated flag, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def outside(values: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The ``values`` not in ``allowed``, in order."""
    allowed = set(allowed)
    return [v for v in values if v not in allowed]


def require_at_least(
    parser: argparse.ArgumentParser, values: dict[str, int | None], minimum: int = 1
) -> None:
    """One ``error:`` line ``argument FLAG: must be an integer >= minimum, got V`` for the first of ``values``
    (flag -> value) below ``minimum``; ``None`` (an optional flag left unset) passes."""
    for flag, value in values.items():
        if value is not None and value < minimum:
            parser.error(f"argument {flag}: must be an integer >= {minimum}, got {value}")
