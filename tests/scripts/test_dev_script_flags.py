"""The benchmark and developer scripts declare their flags as typed dataclasses (``HfArgumentParser``): run as
commands, ``--help`` lists every flag with its default (a required flag says so) and one bad value is one
``error:`` line naming the flag, exit status 2, no traceback."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys

import pytest
from script_loading import load_script
from tiny_runs import REPO, SCRIPTS, script_env

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


def command(name: str) -> list[str]:
    """How the script is run: a file of ``scripts/`` or a module of ``benchmarks/``."""
    if name.startswith("benchmarks."):
        return [sys.executable, "-m", name]
    return [sys.executable, str(SCRIPTS / f"{name}.py")]


def flag_classes(name: str) -> list[type]:
    """The flag dataclasses the script declares (``...Flags``)."""
    module = importlib.import_module(name) if name.startswith("benchmarks.") else load_script(name)
    return [
        cls
        for cls_name, cls in vars(module).items()
        if cls_name.endswith("Flags") and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__
    ]


def run(name: str, argv: list[str], cwd) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of the script with ``argv``, this checkout first on the path."""
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "2000"  # one line per flag in --help
    proc = subprocess.run(
        [*command(name), *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


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
    """The default of ``field`` as ``--help`` prints it."""
    if field.default_factory is not dataclasses.MISSING:
        return str(field.default_factory())
    return str(field.default)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_help_lists_every_flag_with_its_default(name, tmp_path):
    code, out, err = run(name, ["--help"], tmp_path)
    assert code == 0, err
    entries = help_entries(out)
    fields = [f for cls in flag_classes(name) for f in dataclasses.fields(cls)]
    assert fields, f"{name} declares no flag dataclass"
    assert set(entries) == {f"--{f.name}" for f in fields}, out
    for field in fields:
        entry = entries[f"--{field.name}"]
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert entry.endswith("(required)"), entry
        else:
            assert entry.endswith(f"(default: {shown_default(field)})"), entry
        assert field.metadata.get("help"), f"{name}: --{field.name} has no help text"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_bad_value_is_one_error_line_naming_its_flag(name, tmp_path):
    argv, flag, fragment = BAD_VALUES[name]
    code, out, err = run(name, argv, tmp_path)
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert f"error: argument {flag}:" in errors[0] or f"error: {flag}" in errors[0], errors[0]
    assert fragment in errors[0], errors[0]


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
