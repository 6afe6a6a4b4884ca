"""Every numeric training flag has one range, declared on its field (``flag(..., range=...)``; read back by
``hf_deq.training.flag_ranges.flag_ranges``), and a value outside it, NaN and
±inf included, on the command line or in a ``--config`` recipe, is one ``error:`` line naming the flag, the value
and the range, exit status 2, before any data is loaded."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from script_loading import load_script

from hf_deq.tasks import get_task
from hf_deq.training import DEQ_ARGUMENT_NAMES, FlagError, training_arguments_class, training_parser
from hf_deq.training.arguments import check_training_args
from hf_deq.training.flag_ranges import Range, count_range, flag_ranges

MDEQ, LM = "train_mdeq_classifier", "train_deq_lm"

CASES = [
    (MDEQ, ["--weight_decay", "nan"], "--weight_decay", ">= 0 and finite, got nan"),
    (MDEQ, ["--max_grad_norm", "nan"], "--max_grad_norm", ">= 0 and finite, got nan"),
    (
        MDEQ,
        ["--learning_rate", "inf"],
        "--learning_rate",
        "> 0 and at most 3.4e38 (float32's largest), got inf",
    ),
    (MDEQ, ["--learning_rate", "1e300"], "--learning_rate", "got 1e+300"),
    (MDEQ, ["--learning_rate=-inf"], "--learning_rate", "got -inf"),
    (LM, ["--min_lr_ratio", "nan"], "--min_lr_ratio", "in [0, 1], got nan"),
    (LM, ["--min_lr_ratio", "1.5"], "--min_lr_ratio", "in [0, 1], got 1.5"),
    (MDEQ, ["--adam_beta1", "1"], "--adam_beta1", "in [0, 1), got 1.0"),
    (MDEQ, ["--adam_beta2", "-0.1"], "--adam_beta2", "in [0, 1), got -0.1"),
    (MDEQ, ["--adam_epsilon", "0"], "--adam_epsilon", "> 0 and finite, got 0.0"),
    (MDEQ, ["--adam_epsilon", "nan"], "--adam_epsilon", "got nan"),
    (MDEQ, ["--optimizer", "sgd", "--momentum", "nan"], "--momentum", "in [0, 1), got nan"),
    (MDEQ, ["--optimizer", "sgd", "--nesterov", "--momentum", "0"], "--nesterov", "needs --momentum > 0"),
    (MDEQ, ["--seed", "-1"], "--seed", "an integer in [0, 4294967295], got -1"),
    (LM, ["--seed", str(2**32)], "--seed", "got 4294967296"),
    (MDEQ, ["--split_seed", "-1"], "--split_seed", "got -1"),
    (MDEQ, ["--torch_num_threads", str(10**11)], "--torch_num_threads", "an integer in [1, 4096]"),
    (MDEQ, ["--dataloader_num_workers", "100000"], "--dataloader_num_workers", "in [0, 1024]"),
    (LM, ["--preprocessing_num_workers", "-1"], "--preprocessing_num_workers", "got -1"),
    (LM, ["--tokenizer_vocab_size", "0"], "--tokenizer_vocab_size", "an integer >= 2 (and < 2**53), got 0"),
    (MDEQ, ["--unrolled_warmup_depth", "0"], "--unrolled_warmup_depth", "an integer in [1, 1000], got 0"),
    (LM, ["--unrolled_warmup_depth", str(10**12)], "--unrolled_warmup_depth", "[1, 1000], got 1000000000000"),
    (MDEQ, ["--max_train_samples", "0"], "--max_train_samples", "an integer >= 1 (and < 2**53), got 0"),
    (
        MDEQ,
        ["--max_train_steps", "1" + "0" * 400],
        "--max_train_steps",
        "an integer >= 1 (and < 2**53), got 1000",
    ),
    (MDEQ, ["--checkpointing_steps", "\u00b2"], "--checkpointing_steps", "got '\u00b2'"),
]


def _no_data(monkeypatch) -> None:
    """Loading any data fails the test: the errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    import datasets

    import hf_deq.tasks.causal_lm as causal_lm
    import hf_deq.tasks.image_classification as image_classification

    # the names the tasks call (imported before patching: a module first imported under the patch keeps it)
    monkeypatch.setattr(image_classification, "load_image_datasets", refuse)
    monkeypatch.setattr(causal_lm, "load_text_datasets", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)


def _one_error_line(err: str, flag: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert f"error: argument {flag}:" in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def _refused(script: str, argv: list[str], flag: str, fragment: str, monkeypatch, capsys) -> None:
    _no_data(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, flag, fragment)


@pytest.mark.parametrize(("script", "argv", "flag", "fragment"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_a_value_outside_its_range_is_one_error_line(
    script, argv, flag, fragment, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _refused(script, [*argv, "--output_dir", str(tmp_path / "out")], flag, fragment, monkeypatch, capsys)
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("weight_decay", math.nan, "got nan"),
        ("learning_rate", math.inf, "got inf"),
        ("max_grad_norm", math.nan, "got nan"),
        ("min_lr_ratio", math.nan, "got nan"),
        ("adam_beta2", 1, "in [0, 1), got 1.0"),
    ],
)
def test_a_recipe_value_outside_its_range_is_one_error_line(
    key, value, fragment, tmp_path, monkeypatch, capsys
):
    """JSON recipes may hold NaN and Infinity (Python's json reads them): checked like the flags."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({key: value}))
    assert "NaN" in recipe.read_text() or "Infinity" in recipe.read_text() or key == "adam_beta2"
    _refused(LM, ["--config", str(recipe)], f"--{key}", fragment, monkeypatch, capsys)


def _numeric_flags(task_name: str) -> set[str]:
    parser = training_parser(get_task(task_name))
    return {a.dest for a in parser._actions if a.type in (int, float)}


@pytest.mark.parametrize("task_name", ["image-classification", "causal-lm"])
def test_every_numeric_flag_has_a_range(task_name):
    """A new numeric flag gets a range, or the config checks it (the DEQ flags), or its task does (a data flag
    whose check carries its own wording)."""
    task = get_task(task_name)
    checked_by_the_task = {"train_val_split"}
    ranged = flag_ranges(training_arguments_class(task))
    unranged = _numeric_flags(task_name) - set(ranged) - set(DEQ_ARGUMENT_NAMES)
    assert unranged <= checked_by_the_task, unranged
    assert not set(ranged) & set(DEQ_ARGUMENT_NAMES)  # (the config checks those: one check each)


def test_a_range_refuses_nan_inf_bools_and_non_integers_for_counts():
    unit = Range(0, 1, high_open=True)
    assert 0 in unit and 0.5 in unit and 1 not in unit and -1e-9 not in unit
    for hostile in (math.nan, math.inf, -math.inf, True, "0.5", None):
        assert hostile not in unit and hostile not in Range(), hostile
    steps = count_range(1)
    assert 1 in steps and 2**53 - 1 in steps and 2**53 not in steps and 10**400 not in steps
    assert 0 not in steps and 1.0 not in steps
    assert Range(0, low_open=True).describe() == "> 0 and finite"
    assert count_range(0, 2**32 - 1).describe() == "an integer in [0, 4294967295]"
    assert count_range(1).describe() == "an integer >= 1 (and < 2**53)"
    assert Range().describe() == "a finite number"


def test_the_defaults_of_both_scripts_are_in_range(tmp_path):
    for script in (MDEQ, LM):
        args = load_script(script).parse_args(["--output_dir", str(tmp_path / "out")])
        ranged = flag_ranges(args)
        assert {"learning_rate", "seed", "block_size" if script == LM else "split_seed"} <= set(ranged)
        for name, allowed in ranged.items():
            value = getattr(args, name)
            assert value is None or value in allowed, (script, name, value)


@pytest.mark.parametrize(("name", "value"), [("learning_rate", math.nan), ("block_size", 1), ("seed", -1)])
def test_arguments_built_without_the_parser_meet_the_same_check(name, value, tmp_path):
    """``check_training_args`` reads the ranges off the fields: an arguments object built directly (or through
    ``dataclasses.replace``) is refused with the parser's words."""
    task = get_task("causal-lm")
    args = training_arguments_class(task)(output_dir=str(tmp_path / "out"))
    allowed = flag_ranges(args)[name]
    with pytest.raises(FlagError) as info:
        check_training_args(dataclasses.replace(args, **{name: value}), task)
    assert info.value.flag == f"--{name}"
    assert str(info.value) == f"must be {allowed.describe()}, got {value!r}"
