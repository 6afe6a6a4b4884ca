"""Every flag of every script in ``scripts/`` has a help text, and the thread flag has one name everywhere."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from script_loading import SCRIPTS, load_script

#: scripts whose flags are transformers' own ``TrainingArguments`` besides ours (checked through the dataclasses)
HF_ARGUMENT_SCRIPTS = {"finetune_with_trainer"}


class _Parsed(Exception):
    """Raised instead of parsing: carries the parser the script built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def the_parser(script, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script builds, caught when it parses (before anything runs)."""

    original = argparse.ArgumentParser.parse_known_args

    def caught(self, *args, **kwargs):
        if [a.dest for a in self._actions] == ["config"]:  # the pre-parse of ``--config FILE`` only
            return original(self, *args, **kwargs)
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", caught)
    entry = getattr(script, "parse_args", None) or script.main
    with pytest.raises(_Parsed) as parsed:
        entry([])
    return parsed.value.parser


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in SCRIPTS.glob("*.py") if p.stem not in HF_ARGUMENT_SCRIPTS)
)
def test_every_flag_has_a_help_text(name, monkeypatch):
    parser = the_parser(load_script(name), monkeypatch)
    flags = {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    assert flags, f"{name} has no flags"
    missing = sorted(dest for dest, action in flags.items() if not action.help)
    assert not missing, f"scripts/{name}.py: flags without help: {missing}"
    thread_flags = {o for a in flags.values() for o in a.option_strings if "threads" in o}
    assert thread_flags <= {"--torch_num_threads"}, thread_flags  # FlagParser: one spelling per flag


def test_the_trainer_script_documents_its_own_arguments():
    script = load_script("finetune_with_trainer")
    for cls in (script.ModelArguments, script.DataArguments):
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not missing, f"{cls.__name__}: fields without help: {missing}"


@pytest.mark.parametrize("name", ["train_mdeq_classifier", "train_deq_lm"])
def test_the_training_scripts_help_shows_every_default_and_how_to_launch_on_cpu(name, monkeypatch):
    parser = the_parser(load_script(name), monkeypatch)
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    without = [a.dest for a in flags if "default" not in formatter._get_help_string(a)]
    assert not without, f"scripts/{name}.py: flags whose help shows no default: {without}"
    text = parser.format_help()
    if name == "train_deq_lm":
        assert "tokens per training sequence (default: 128)" in " ".join(text.split())
    assert f"ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N {name}.py" in text
