"""The one argument system (``hf_deq.training.flags.FlagParser``): a ``--config`` file (JSON or YAML) and the
equivalent command line give equal typed argument objects and the same tiny training run; every flag of every
converted script shows its default in ``--help``; a check returns resolved values and leaves its input as it
is; a bad config file is one ``error:`` line naming the key and the file; a made-up script's flags (the pieces
the benchmark and developer scripts use: required flags, several values per flag, ranges, flags passed on)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
from script_loading import load_script
from tiny_runs import mdeq_args, read_log, step_losses

from hf_deq.tasks import get_task
from hf_deq.training import FlagError, FlagParser, training_parser
from hf_deq.training.arguments import check_training_args
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import flag

CONVERTED_SCRIPTS = (
    "train_mdeq_classifier",
    "train_deq_lm",
    "finetune_with_trainer",
    "evaluate_deq",
    "plot_run",
    "push_to_hub",
    "gradient_alignment_sweep",
)


def _as_recipe(argv: list[str]) -> dict:
    """The ``--config`` object of a command line of ``--flag value`` pairs and bare switches (values are
    JSON numbers where they parse as such, as a recipe writes them)."""
    recipe, i = {}, 0
    while i < len(argv):
        key = argv[i].removeprefix("--")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            text = argv[i + 1]
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            recipe[key], i = (text if isinstance(value, bool) else value), i + 2
        else:
            recipe[key], i = True, i + 1
    return recipe


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_file_and_the_command_line_give_equal_arguments(tmp_path, suffix):
    import yaml

    script = load_script("train_mdeq_classifier")
    argv = mdeq_args(tmp_path / "out", "--grad_estimator", "npg", "--compile_cell", "--augment", "crop")
    recipe = _as_recipe(argv)
    assert recipe["max_train_steps"] == 4 and recipe["compile_cell"] is True
    path = tmp_path / f"recipe{suffix}"
    path.write_text(json.dumps(recipe) if suffix == ".json" else yaml.safe_dump(recipe))
    from_file = script.parse_args(["--config", str(path)])
    assert from_file == script.parse_args(argv)
    assert type(from_file).__name__ == "ImageClassificationArguments"
    assert (from_file.learning_rate, from_file.grad_estimator, from_file.compile_cell) == (3e-3, "npg", True)


def test_a_config_file_and_the_command_line_train_the_same(tmp_path, fresh_accelerate_state):
    from accelerate.state import AcceleratorState

    script = load_script("train_mdeq_classifier")
    argv = mdeq_args(tmp_path / "flags", "--log_file", str(tmp_path / "flags.jsonl"), steps=3)
    results_from_flags = script.main(argv)
    recipe = _as_recipe(mdeq_args(tmp_path / "file", "--log_file", str(tmp_path / "file.jsonl"), steps=3))
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    AcceleratorState._reset_state(True)
    results_from_file = script.main(["--config", str(tmp_path / "recipe.json")])
    flags_losses = step_losses(read_log(tmp_path / "flags.jsonl"))
    assert flags_losses and flags_losses == step_losses(read_log(tmp_path / "file.jsonl"))
    for name in ("train_loss", "eval_loss", "eval_accuracy", "train_steps"):
        assert results_from_flags[name] == results_from_file[name], name
    saved = [json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("flags", "file")]
    assert saved[0]["eval_accuracy"] == saved[1]["eval_accuracy"]


@pytest.mark.parametrize("name", CONVERTED_SCRIPTS)
def test_every_flag_of_every_converted_script_shows_its_default(name, capsys):
    module = load_script(name)
    entry = getattr(module, "parse_args", None) or module.main
    with pytest.raises(SystemExit) as exit_info:
        entry(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = text[text.index("options:") :]
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert len(entries) > 2
    missing = [e.split()[0] for e in entries if not re.search(r"default|required|show this help", e)]
    assert not missing, missing


def test_a_check_returns_resolved_values_and_leaves_its_input_as_it_is(tmp_path):
    task = get_task("image-classification")
    (args,) = training_parser(task).parse_into_dataclasses(["--output_dir", str(tmp_path / "out")])
    before = copy.deepcopy(args)
    resolved = check_training_args(args, task)
    assert args == before and args.dataset_name is None  # the input is untouched
    assert resolved.dataset_name == "digits" and resolved.resume_checkpoint is None
    assert task.check_args(args) == {"dataset_name": "digits"}
    tracked = dataclasses.replace(resolved, with_tracking=True, report_to="none")
    assert script_checked(tracked).with_tracking is False and tracked.with_tracking is True


def script_checked(args):
    from hf_deq.training.script import check_script_args

    return check_script_args(args, "train_mdeq_classifier.py")


def test_a_refused_value_is_a_typed_error_naming_the_flag_value_and_range(tmp_path):
    task = get_task("causal-lm")
    (args,) = training_parser(task).parse_into_dataclasses([])
    with pytest.raises(FlagError) as err:  # (the parser refuses --block_size 1 itself, with the same check)
        check_training_args(dataclasses.replace(args, block_size=1), task)
    assert (err.value.flag, err.value.value) == ("--block_size", 1)
    assert "at least 2" in str(err.value)


def test_a_yaml_recipe_is_checked_like_a_json_one(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("num_train_epochs: 2.5\n")
    with pytest.raises(SystemExit):
        load_script("train_deq_lm").parse_args(["--config", str(path)])
    assert "'num_train_epochs' must be an integer, got 2.5" in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class ExampleFlags:
    """Flags of a made-up script."""

    output_dir: str = flag(dataclasses.MISSING, "where results go")
    steps: int = flag(3, "timed steps", range=count_range(1))
    batch: int | None = flag(None, "batch (default: the preset's)", range=count_range(1))
    estimators: list[str] = flag(["upg", "npg"], "compared", choices=["upg", "npg", "implicit"], nargs="+")
    quick: bool = flag(False, "a smoke run")


def example_parser() -> FlagParser:
    return FlagParser(ExampleFlags, prog="example.py", description="Line one.\n\n    indented example")


def _error_line(argv: list[str], capsys, **kwargs) -> str:
    with pytest.raises(SystemExit) as exit_info:
        example_parser().parse_into_dataclasses(argv, **kwargs)
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    return line


def test_a_made_up_scripts_flags_parse_into_its_frozen_dataclass():
    (flags,) = example_parser().parse_into_dataclasses(
        ["--output_dir", "out", "--steps", "5", "--estimators", "implicit", "upg", "--quick"]
    )
    assert flags == ExampleFlags("out", steps=5, batch=None, estimators=["implicit", "upg"], quick=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.steps = 1  # the parsed object is never edited
    (flags,) = example_parser().parse_into_dataclasses(["--output_dir", "out"])
    assert flags.estimators == ["upg", "npg"]


def test_help_keeps_the_description_and_shows_every_default_or_required():
    text = example_parser().format_help()
    assert "\n\n    indented example\n" in text
    options = " ".join(text.split("indented example")[1].split())
    assert "where results go (required)" in options and "timed steps (default: 3)" in options
    assert "batch (default: the preset's) " in options and "a smoke run (default: False)" in options
    assert "compared (default: ['upg', 'npg'])" in options


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--stpes", "5"], "example.py: error: unrecognized arguments: --stpes 5"),
        (
            ["--steps", "0"],
            "example.py: error: argument --steps: must be an integer >= 1 (and < 2**53), got 0",
        ),
        (
            ["--batch", "-2"],
            "example.py: error: argument --batch: must be an integer >= 1 (and < 2**53), got -2",
        ),
        (
            ["--estimators", "upg", "exact"],
            "example.py: error: argument --estimators: invalid choice: 'exact'",
        ),
        (["--estimators"], "example.py: error: argument --estimators: expected at least one argument"),
    ],
)
def test_a_bad_value_of_a_made_up_script_is_one_error_line(argv, line, capsys):
    assert _error_line(["--output_dir", "out", *argv], capsys).startswith(line)


def test_with_remaining_the_flags_no_dataclass_knows_come_back():
    flags, rest = example_parser().parse_into_dataclasses(
        ["--output_dir", "o", "--", "--preset", "x"], remaining=True
    )
    assert flags.output_dir == "o" and [a for a in rest if a != "--"] == ["--preset", "x"]


def test_a_config_file_gives_several_values_and_meets_the_ranges(tmp_path, capsys):
    parser = FlagParser(ExampleFlags, prog="example.py", config_file=True)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"estimators": ["implicit"], "steps": 4}))
    (flags,) = parser.parse_into_dataclasses(["--config", str(path), "--output_dir", "o"])
    assert flags.estimators == ["implicit"] and flags.steps == 4
    for recipe, message in (
        ({"estimators": "implicit"}, "'estimators' takes a list of values, got 'implicit'"),
        ({"estimators": ["exact"]}, "'estimators' must be one of ['upg', 'npg', 'implicit'], got 'exact'"),
        ({"steps": 0}, "argument --steps: must be an integer >= 1 (and < 2**53), got 0"),
    ):
        path.write_text(json.dumps(recipe))
        with pytest.raises(SystemExit):
            FlagParser(ExampleFlags, prog="example.py", config_file=True).parse_into_dataclasses(
                ["--config", str(path), "--output_dir", "o"]
            )
        assert message in capsys.readouterr().err
