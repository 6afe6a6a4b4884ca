"""The shared flag vocabulary: the DEQ flags are derived from the config's solver and estimator groups (a new
field, a bool one included, gets its flag), every flag has a help text, both training scripts share every flag
but their data flags, and a config error is reported under the flag that set the field."""

from __future__ import annotations

import argparse

import pytest
from script_loading import load_script

from hf_deq import DEQConfig
from hf_deq.tasks import get_task
from hf_deq.training import DEQ_ARGUMENT_NAMES, DEQArguments, FlagParser, training_parser
from hf_deq.training.arguments import config_error_flag, deq_argument_names, deq_arguments_class


def _parser(task_name: str) -> FlagParser:
    return training_parser(get_task(task_name))


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}


def test_the_deq_flags_are_the_configs_solver_and_estimator_fields():
    assert DEQ_ARGUMENT_NAMES == (*DEQConfig.SOLVER_FIELDS, *DEQConfig.GRAD_FIELDS, "jacobian_reg_weight")
    parser = FlagParser(DEQArguments)
    flags = _flags(parser)
    assert set(DEQ_ARGUMENT_NAMES) <= set(flags)
    assert flags["solver_max_iter"].type is int and flags["solver_tol"].type is float
    assert "anderson" in flags["solver"].choices and "gmres" not in flags["solver"].choices
    assert "gmres" in flags["grad_solver"].choices and "upg" in flags["grad_estimator"].choices
    assert "lambda of UPG/NPG" in flags["grad_damping"].help  # the config docstring's text
    (args,) = parser.parse_into_dataclasses(
        ["--solver_kwargs", '{"memory": 3}', "--solver_eval_max_iter", "4"]
    )
    assert args.solver_kwargs == {"memory": 3} and args.solver_eval_max_iter == 4 and args.grad_steps is None


def test_a_new_bool_field_in_a_group_gets_a_switch_flag(tmp_path):
    class TracedConfig(DEQConfig):
        """A config with one more estimator field.

        Args:
            trace_solver: record every iterate.
        """

        trace_solver: bool = False
        GRAD_FIELDS = (*DEQConfig.GRAD_FIELDS, "trace_solver")

    assert "trace_solver" in deq_argument_names(TracedConfig)
    parser = FlagParser(deq_arguments_class(TracedConfig), script="x.py")
    assert parser.parse_into_dataclasses([])[0].trace_solver is None  # unset: the preset's value
    assert parser.parse_into_dataclasses(["--trace_solver"])[0].trace_solver is True
    assert parser.parse_into_dataclasses(["--no-trace_solver"])[0].trace_solver is False
    assert _flags(parser)["trace_solver"].help == "record every iterate."
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"trace_solver": true}')
    assert parser.read_config_file(recipe) == {"trace_solver": True}
    recipe.write_text('{"trace_solver": "yes"}')
    with pytest.raises(
        argparse.ArgumentTypeError, match="'trace_solver' is a switch, so it takes true or false"
    ):
        parser.read_config_file(recipe)


def test_compile_cell_is_a_switch_of_both_training_scripts():
    for task_name in ("image-classification", "causal-lm"):
        parser = _parser(task_name)
        assert parser.parse_into_dataclasses(["--compile_cell"])[0].compile_cell is True
        assert parser.parse_into_dataclasses([])[0].compile_cell is None  # unset: the preset's value


@pytest.mark.parametrize("task_name", ["image-classification", "causal-lm"])
def test_every_flag_has_a_help_text(task_name):
    missing = [dest for dest, action in _flags(_parser(task_name)).items() if not action.help]
    assert not missing, missing


def test_both_training_scripts_share_every_flag_but_their_data_flags():
    image, text = _flags(_parser("image-classification")), _flags(_parser("causal-lm"))
    image_only = {"train_dir", "validation_dir", "image_column_name", "label_column_name", "train_val_split"}
    image_only |= {"split_seed", "augment"}
    text_only = {
        "train_file",
        "validation_file",
        "text_column_name",
        "validation_split_percentage",
        "block_size",
    }
    text_only |= {"preprocessing_num_workers", "tokenizer_name", "train_tokenizer", "tokenizer_vocab_size"}
    assert set(image) - set(text) == image_only and set(text) - set(image) == text_only
    for name in ("torch_num_threads", "output_dir", "mixed_precision", "report_to", "max_grad_norm"):
        assert image[name].help == text[name].help and image[name].type is text[name].type, name
    assert "num_threads" not in image and "num_threads" not in text


def test_a_config_error_is_reported_under_the_flag_that_set_the_field():
    args = argparse.Namespace(
        solver_max_iter=-1, config_overrides={"dropout": 2.0}, model_name_or_path=None, preset="p"
    )
    assert config_error_flag(args, "solver_max_iter") == "--solver_max_iter"
    assert config_error_flag(args, "dropout") == "--config_overrides"
    assert config_error_flag(args, None) == "--config_overrides"
    args.config_overrides = None
    assert config_error_flag(args, "num_labels") == "--preset"
    args.model_name_or_path = "saved"
    assert config_error_flag(args, "num_labels") == "--model_name_or_path"


def test_the_output_dir_is_required_and_means_the_same_in_both_scripts(tmp_path, capsys):
    for script in ("train_mdeq_classifier", "train_deq_lm"):
        with pytest.raises(SystemExit) as exit_info:  # a run that would save nothing is refused
            load_script(script).parse_args([])
        assert exit_info.value.code == 2
        assert "error: argument --output_dir: required" in capsys.readouterr().err
        args = load_script(script).parse_args(["--output_dir", str(tmp_path / script)])
        assert args.output_dir == str(tmp_path / script) and not args.overwrite_output_dir
