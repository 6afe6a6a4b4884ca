"""``benchmarks.flags``: the comma-separated flag values of the benchmark and developer scripts (their parser is
``hf_deq.training.flags.FlagParser``, tested in ``tests/training/test_typed_arguments.py``)."""

from __future__ import annotations

from benchmarks.flags import outside, split_commas


def test_comma_separated_values_and_their_check():
    assert split_commas(" a, b,,c ") == ["a", "b", "c"] and split_commas("") == []
    assert outside(["a", "x", "b", "y"], ["a", "b"]) == ["x", "y"]
