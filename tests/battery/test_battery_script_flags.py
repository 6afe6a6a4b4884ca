"""Battery (a): every training flag of both scripts, each class of hostile value, through the scripts' own
in-process entry (``parse_args``: the flag parsing and every check done before data loads). The only right
outcomes: one ``error:`` line naming the flag and the value (exit status 2, nothing written), or the value
reaches the run unchanged, when it is one a run can take."""

from __future__ import annotations

import argparse
import functools
import re

import pytest
from battery_probe import BATTERY, VALUE_KINDS, case, hostile_text
from hypothesis import given
from hypothesis import strategies as st
from script_probe import ENTRIES, flag_parser, probe_entry, same, script, written
from training_flags import FLAGS, parse_number

import hf_deq


def _numeric_cases(family: str) -> list:
    return [
        case(ENTRIES[family], name, kind)
        for name, flag in FLAGS.items()
        if family in flag.scripts
        for kind in VALUE_KINDS
    ]


def _parse_and_check(family, name, kind, text, valid, expected, tmp_path, capsys, extra=()):
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *extra, f"--{name}={text}"]

    def check(args) -> str:
        if written([out]):
            return f"parsing wrote {out}"
        got = getattr(args, name)
        return "" if expected is None or same(got, expected) else f"the run gets {got!r}, not {expected!r}"

    probe_entry(
        ENTRIES[family],
        name,
        kind,
        text,
        functools.partial(script(family).parse_args, argv),
        capsys,
        names=[f"--{name}"],
        valid=valid,
        check_result=check,
        untouched=[out],
    )


@pytest.mark.parametrize("family", ["mdeq", "lm"])
def test_every_flag_has_a_spec(family):
    """Guards the oracle: a numeric or choice flag added later must get its spec in training_flags.FLAGS."""
    parser = flag_parser(family)
    typed = {
        a.dest
        for a in parser._actions
        if a.type in (int, float)
        or (a.choices is not None and not isinstance(a, argparse.BooleanOptionalAction))
    }
    mine = {n for n, f in FLAGS.items() if family in f.scripts}
    assert typed == mine, (sorted(typed - mine), sorted(mine - typed))


@pytest.mark.parametrize("name, kind", _numeric_cases("mdeq"))
@BATTERY
@given(data=st.data())
def test_mdeq_classifier_flag(name, kind, data, tmp_path, capsys):
    _one_flag("mdeq", name, kind, data, tmp_path, capsys)


@pytest.mark.parametrize("name, kind", _numeric_cases("lm"))
@BATTERY
@given(data=st.data())
def test_deq_lm_flag(name, kind, data, tmp_path, capsys):
    _one_flag("lm", name, kind, data, tmp_path, capsys)


def _one_flag(family, name, kind, data, tmp_path, capsys):
    flag = FLAGS[name]
    text = data.draw(hostile_text(kind, "str" if flag.type == "choice" else flag.type), label=name)
    ok, value = parse_number(flag, text)
    valid = flag.valid(value) if ok else False
    _parse_and_check(family, name, kind, text, valid, value if ok else None, tmp_path, capsys)


# -- the free-text flags checked before data loads -----------------------------------------------------------------
def _preset_valid(family):
    model_type = script(family).TASK.model_type
    return lambda text: text in [
        n for n in hf_deq.list_variants(include_test=True)
        if hf_deq.variants.get_variant(n).config_class.model_type == model_type
    ]  # fmt: skip


def _checkpointing_steps(text: str) -> bool | None:
    """'epoch' or a positive integer in ASCII digits; other digits ('٣', which ``int`` reads as 3): either (the
    flag is text, and the scripts take ASCII digits only, as '²' would crash ``int``)."""
    if text == "epoch" or (text.isascii() and text.isdigit() and int(text) >= 1):
        return True
    try:
        number = int(text)
    except ValueError:
        return False
    return None if text.isdigit() and number >= 1 else False


def _repo_name(text: str) -> bool | None:
    return (
        None
        if text == ""
        or re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}", text)
        else False
    )


def _json_object_of_fields(text: str) -> bool | None:
    return None if text.strip() == "{}" else False


TEXT_FLAGS = {
    # name: (valid(text), extra argv)
    "preset": (None, ()),  # filled per family
    "checkpointing_steps": (_checkpointing_steps, ()),
    "report_to": (lambda t: False, ("--with_tracking",)),
    "hub_model_id": (_repo_name, ("--push_to_hub",)),
    "resume_from_checkpoint": (lambda t: False, ()),
    "config_overrides": (_json_object_of_fields, ()),
    "solver_kwargs": (_json_object_of_fields, ()),
}
TEXT_KINDS = ("nan", "zero", "negative", "huge", "wrong_type", "empty", "unicode", "bool")


def _text_cases() -> list:
    return [
        case(ENTRIES[family], name, kind, family)
        for family in ("mdeq", "lm")
        for name in TEXT_FLAGS
        for kind in TEXT_KINDS
    ]


@pytest.mark.parametrize("family, name, kind", _text_cases())
@BATTERY
@given(data=st.data())
def test_text_flag(family, name, kind, data, tmp_path, capsys):
    text = data.draw(hostile_text(kind, "str"), label=name)
    valid_fn, extra = TEXT_FLAGS[name]
    valid = (valid_fn or _preset_valid(family))(text)
    expected = text if name not in ("config_overrides", "solver_kwargs") else None
    _parse_and_check(family, name, kind, text, valid, expected, tmp_path, capsys, extra)
