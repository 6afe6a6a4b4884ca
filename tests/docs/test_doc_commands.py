"""The script commands that README.md and docs/ show use flags the scripts have, and README's links resolve."""

from __future__ import annotations

import re

import pytest
from doc_commands import _commands_in, documented_commands, script_flags, scripts_on_disk
from doc_examples import REPO


@pytest.fixture(scope="module")
def commands():
    return documented_commands()


def test_pages_show_script_commands(commands):
    # the main job and both training scripts are shown: a parser that found nothing would pass everything below
    shown = {command.script for command in commands}
    assert {"train_mdeq_classifier", "train_deq_lm", "evaluate_deq", "push_to_hub"} <= shown


def test_documented_scripts_exist(commands):
    missing = sorted(
        {f"{c.where}: scripts/{c.script}.py" for c in commands if c.script not in scripts_on_disk()}
    )
    assert not missing, f"commands name scripts that do not exist: {missing}"


def test_documented_flags_exist(commands):
    unknown = []
    for name in sorted({c.script for c in commands} & scripts_on_disk()):
        flags = script_flags(name)
        assert "--help" in flags, f"scripts/{name}.py --help printed no flags"
        unknown += [
            f"{c.where}: scripts/{name}.py {flag}"
            for c in commands
            if c.script == name
            for flag in c.flags
            if flag not in flags
        ]
    assert not unknown, "flags shown in the docs that the script does not have:\n" + "\n".join(unknown)


def test_a_renamed_flag_is_caught():
    (command,) = _commands_in(
        "python scripts/plot_run.py --run_dir runs/x --outptu curves.png -- --ignored", "t"
    )
    assert command.flags == ("--run_dir", "--outptu")
    assert "--outptu" not in script_flags("plot_run") and "--run_dir" in script_flags("plot_run")


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert targets, "README links to no page of the docs"
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
