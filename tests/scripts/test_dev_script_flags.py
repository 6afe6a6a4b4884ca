"""The benchmark and developer scripts declare their flags with ``FlagParser`` (``hf_deq.training.flags``):
``--help`` lists every flag with its default (a required flag says so) and one bad value is one ``error:`` line
naming the flag, exit status 2, no traceback. Checked in this process (each script's ``main`` with an argv, so
every script is imported once); one script also runs as a command, the way a user meets the error line."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys

import pytest
from script_loading import load_script
from tiny_runs import REPO, script_env

#: script -> (a bad flag value, the flag its error line names, a fragment of that line: the value)
BAD_VALUES = {
    "benchmark_adaptive_head": (["--device", "tpu"], "--device", "'tpu'"),
    "benchmark_compile_cell": (["--presets", "deq-nope"], "--presets", "deq-nope"),
    "benchmark_config_sync": (["--repeats", "0"], "--repeats", "got 0"),
    "benchmark_estimators": (["--cells", "conv,mlp"], "--cells", "mlp"),
    "benchmark_generation": (["--config_overrides", "{vocab"], "--config_overrides", "{vocab"),
    "benchmark_load": (["--jobs", "main", "--busy", "1,3"], "--busy", "[1, 3]"),
    "benchmark_solver_ops": (["--solvers", "newton"], "--solvers", "newton"),
    "benchmark_training": (["--families", "lm,gpt"], "--families", "gpt"),
    "compare_estimators": (["--output_dir", "unused", "--task", "translation"], "--task", "'translation'"),
    "gpu_check": (["--variants", "eager,jit"], "--variants", "jit"),
    "bad_input_table": (["--from_json", "no_record.json"], "--from_json", "no_record.json"),
    "benchmarks.inference_cost": (
        ["--model_name_or_path", "m", "--train_file", "t", "--budgets", "10,ten"],
        "--budgets",
        "10,ten",
    ),
}
SCRIPT_NAMES = sorted(BAD_VALUES)
#: the script that also runs as a command (``python -m``: the package's relative imports as a user runs them)
COMMAND = "benchmarks.inference_cost"


def script_module(name: str):
    """The script as a module: a file of ``scripts/`` or a module of ``benchmarks/``."""
    return importlib.import_module(name) if name.startswith("benchmarks.") else load_script(name)


def flag_classes(name: str) -> list[type]:
    """The flag dataclasses the script declares (``...Flags``)."""
    module = script_module(name)
    return [
        cls
        for cls_name, cls in vars(module).items()
        if cls_name.endswith("Flags") and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__
    ]


def run_main(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of the script's ``main(argv)``, which must exit while parsing."""
    module = script_module(name)
    capsys.readouterr()  # what importing the script printed is not its answer
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def help_entries(text: str) -> dict[str, str]:
    """``--flag`` -> its line in ``--help`` (the options part), whitespace collapsed."""
    options = text.split("\noptions:\n", 1)[1]
    entries = {}
    for entry in re.split(r"\n  (?=-)", "\n" + options):
        entry = " ".join(entry.split())
        if entry.startswith("--"):
            entries[entry.split()[0].rstrip(",")] = entry
    return entries


def shown_default(field: dataclasses.Field) -> str:
    """The default of ``field`` as ``--help`` prints it (``none`` for ``None``)."""
    if field.default_factory is not dataclasses.MISSING:
        return str(field.default_factory())
    return field.metadata.get("unset_default", "none") if field.default is None else str(field.default)


def assert_one_error_line(err: str, flag: str, fragment: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert f"error: argument {flag}:" in errors[0] or f"error: {flag}" in errors[0], errors[0]
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_help_lists_every_flag_with_its_default(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag
    code, out, err = run_main(name, ["--help"], capsys)
    assert code == 0, err
    entries = help_entries(out)
    fields = [f for cls in flag_classes(name) for f in dataclasses.fields(cls)]
    assert fields, f"{name} declares no flag dataclass"
    assert set(entries) == {f"--{f.name}" for f in fields}, out
    for field in fields:
        entry, text = entries[f"--{field.name}"], field.metadata.get("help")
        assert text, f"{name}: --{field.name} has no help text"
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert entry.endswith("(required)"), entry
        elif re.search(
            r"\bdefault:? ", text
        ):  # the text says what its default is ("torch's default)" does not)
            assert entry.endswith(" ".join(text.split())), entry
        else:
            assert entry.endswith(f"(default: {shown_default(field)})"), entry


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_bad_value_is_one_error_line_naming_its_flag(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    argv, flag, fragment = BAD_VALUES[name]
    code, out, err = run_main(name, argv, capsys)
    assert code == 2, err
    assert out == ""
    assert_one_error_line(err, flag, fragment)


def test_a_bad_value_on_the_command_line_is_one_error_line(tmp_path):
    """The one real command: exit status 2 and the error line from the interpreter, nothing on stdout."""
    argv, flag, fragment = BAD_VALUES[COMMAND]
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", COMMAND, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, flag, fragment)


def test_gpu_check_prints_its_table_and_ratios_from_the_rows(monkeypatch, capsys):
    """The phases of ``gpu_check.main`` without a GPU: made-up rows in, the table and the ratios out."""
    import torch

    script = load_script("gpu_check")

    def fake_row(family, preset, estimator, flags, variant):
        if variant == "compiled_solve" and estimator == "upg" and family == "lm":
            raise RuntimeError("no graph")
        step = {"eager": 100.0, "compiled_solve": 50.0}[variant]
        bwd = {"implicit": 60.0, "upg": 20.0}[estimator]
        return {
            "family": family, "preset": preset, "estimator": estimator, "variant": variant, "kernel_ms": 40.0,
            "gpu_busy": 0.4, "step_ms": step, "fwd_ms": 30.0, "bwd_ms": bwd, "items_per_s": 1000.0,
            "peak_gib": 1.5, "loss": 2.0, "finite": True, "nstep": 7.0,
        }  # fmt: skip

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(script, "run_estimator", fake_row)
    argv = ["--families", "mdeq,lm", "--estimators", "implicit,upg", "--variants", "eager,compiled_solve"]
    assert script.main([*argv, "--steps", "3"]) == 1  # one row failed
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("device: Fake GPU;") and out[0].endswith("precision bf16")
    assert out[3] == "|---|---|---|---|---|---|---|---|---|---|---|"
    assert out[4] == (
        "| mdeq-tiny-cifar10 | implicit | eager | 100.0 | 30.0 | 60.0 | 40.0 (40%) | 1000 img/s | 1.50 | 7.0 | True |"
    )
    assert (
        out[11] == "| deq-transformer-small | upg | compiled_solve | error: RuntimeError('no graph') ||||||||"
    )
    assert out[12:] == [
        "mdeq-tiny-cifar10 implicit: step(compiled_solve) / step(eager) = 0.50",
        "mdeq-tiny-cifar10 upg: step(compiled_solve) / step(eager) = 0.50",
        "mdeq-tiny-cifar10: backward(implicit) / backward(upg) = 3.00",
        "deq-transformer-small implicit: step(compiled_solve) / step(eager) = 0.50",
        "deq-transformer-small: backward(implicit) / backward(upg) = 3.00",
    ]
