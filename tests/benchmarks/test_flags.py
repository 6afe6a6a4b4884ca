"""``benchmarks.flags``: what the benchmark and developer scripts share around ``HfArgumentParser``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from transformers import HfArgumentParser

from benchmarks.flags import (
    DescriptionAndDefaultsFormatter,
    outside,
    parse_flags,
    parse_known_flags,
    require_at_least,
    split_commas,
)


@dataclass(frozen=True)
class ExampleFlags:
    """Flags of a made-up script."""

    output_dir: str = field(metadata={"help": "where results go"})
    steps: int = field(default=3, metadata={"help": "timed steps"})
    presets: str = field(default="a,b", metadata={"help": "comma-separated presets"})
    quick: bool = field(default=False, metadata={"help": "a smoke run"})


def example_parser() -> HfArgumentParser:
    return HfArgumentParser(
        ExampleFlags, prog="example.py", description="Line one.\n\n    indented example",
        formatter_class=DescriptionAndDefaultsFormatter,
    )  # fmt: skip


def test_parse_flags_gives_the_typed_object():
    (flags,) = parse_flags(example_parser(), ["--output_dir", "out", "--steps", "5", "--quick"])
    assert flags == ExampleFlags(output_dir="out", steps=5, presets="a,b", quick=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.steps = 1  # the parsed object is never edited


def test_an_unknown_flag_is_argparses_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_flags(example_parser(), ["--output_dir", "out", "--stpes", "5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "example.py: error: unrecognized arguments: --stpes 5"


def test_parse_known_flags_returns_the_rest():
    (flags,), rest = parse_known_flags(example_parser(), ["--output_dir", "o", "--", "--preset", "x"])
    assert flags.output_dir == "o" and rest == ["--", "--preset", "x"]


def test_help_keeps_the_description_and_shows_every_default_or_required():
    text = " ".join(example_parser().format_help().split("\n\n    indented example")[1].split())
    assert "where results go (required)" in text
    assert "timed steps (default: 3)" in text and "comma-separated presets (default: a,b)" in text
    assert "a smoke run (default: False)" in text
    assert "\n\n    indented example\n" in example_parser().format_help()


def test_comma_separated_values_and_their_check(capsys):
    assert split_commas(" a, b,,c ") == ["a", "b", "c"] and split_commas("") == []
    assert outside(["a", "x", "b", "y"], ["a", "b"]) == ["x", "y"]
    parser = example_parser()
    require_at_least(parser, {"--steps": 1, "--max_blocks": None})
    with pytest.raises(SystemExit):
        require_at_least(parser, {"--steps": 0})
    assert "error: argument --steps: must be an integer >= 1, got 0" in capsys.readouterr().err
