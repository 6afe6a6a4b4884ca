"""Battery (b): ``--config`` JSON recipes holding hostile values for every training flag (JSON numbers, NaN and
Infinity as Python's json writes them, strings, lists, objects, null, true/false), and hostile keys. The only
right outcomes: one ``error:`` line naming the key and the value (exit status 2, nothing written), or the value
reaches the run as the command line would give it, when it is one a run can take."""

from __future__ import annotations

import functools
import itertools
import json

import pytest
from battery_probe import BATTERY, VALUE_KINDS, case, hostile_json, non_ascii_text
from hypothesis import given
from hypothesis import strategies as st
from script_probe import flag_defaults, probe_entry, same, script, written
from training_flags import FLAGS, json_value

ENTRY = "--config recipe keys"
SWITCHES = ("nesterov", "disable_tqdm", "overwrite_output_dir", "compile_cell", "with_tracking")
_files = itertools.count()
DEFAULTS = {family: flag_defaults(family) for family in ("mdeq", "lm")}


def _run(family, tmp_path, capsys, recipe, name, kind, shown, valid, expected):
    path = tmp_path / f"recipe_{next(_files)}.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "out"

    def check(args) -> str:
        if written([out]):
            return f"parsing wrote {out}"
        got = getattr(args, name)
        return "" if expected is None or same(got, expected) else f"the run gets {got!r}, not {expected!r}"

    probe_entry(
        ENTRY,
        name,
        kind,
        shown,
        functools.partial(script(family).parse_args, ["--config", str(path), "--output_dir", str(out)]),
        capsys,
        names=[repr(name), name],
        valid=valid,
        check_result=check,
        untouched=[out],
    )


def _cases() -> list:
    cases = []
    for name, flag in FLAGS.items():
        family = flag.scripts[-1]
        cases += [case(ENTRY, name, kind, family) for kind in VALUE_KINDS]
    cases += [case(ENTRY, name, kind, "mdeq") for name in SWITCHES for kind in VALUE_KINDS if kind != "bool"]
    return cases


@pytest.mark.parametrize("family, name, kind", _cases())
@BATTERY
@given(data=st.data())
def test_recipe_value(family, name, kind, data, tmp_path, capsys):
    value = data.draw(hostile_json(kind), label=name)
    if name in SWITCHES:
        valid, expected = isinstance(value, bool), value
    elif value is None:  # null: "unset", right only where the flag's default is unset too
        valid, expected = (None if DEFAULTS[family][name] is None else False), None
    else:
        flag = FLAGS[name]
        ok, expected = json_value(flag, value)
        valid = flag.valid(expected) if ok else False
        if isinstance(value, str) and flag.type != "choice" and valid is not False:
            valid = None  # a number written as a string: refusing it is as right as reading it
    _run(family, tmp_path, capsys, {name: value}, name, kind, value, valid, expected)


@BATTERY
@given(
    key=st.one_of(
        st.sampled_from(
            ["", " ", "learning_rat", "lr", "--learning_rate", "LEARNING_RATE", "solver-max-iter"]
        ),
        non_ascii_text,
    )
)
@pytest.mark.parametrize("family", ["mdeq", "lm"])
def test_recipe_unknown_key(family, key, tmp_path, capsys):
    path = tmp_path / f"recipe_{next(_files)}.json"
    path.write_text(json.dumps({key: 1}))
    out = tmp_path / "out"
    probe_entry(
        ENTRY,
        "(unknown key)",
        "key",
        key,
        functools.partial(script(family).parse_args, ["--config", str(path), "--output_dir", str(out)]),
        capsys,
        names=["unknown key"],
        valid=False,
        untouched=[out],
    )
