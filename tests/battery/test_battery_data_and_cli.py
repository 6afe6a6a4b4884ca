"""Battery (a), continued: the data flags, whose values are checked when the data loads, through the scripts'
in-process ``main`` (a tiny run, so that a value taken by mistake still ends in seconds); and a few runs of the
real command line, which must print one ``error:`` line and no traceback."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from battery_probe import BATTERY, case, known_reason, record, timed
from hypothesis import given, settings
from hypothesis import strategies as st
from script_probe import probe_entry, script
from tiny_runs import LM_SCRIPT, MDEQ_SCRIPT, REPO, script_env, small_text_file

DATA_ENTRY = "data flags (main, in-process)"
CLI_ENTRY = "command line (subprocess)"


def _mdeq_argv(out: Path) -> list[str]:
    return [
        "--preset", "test_mdeq_tiny", "--max_train_samples", "24", "--max_eval_samples", "12",
        "--per_device_train_batch_size", "12", "--max_train_steps", "1", "--solver_on_failure", "ignore",
        "--torch_num_threads", "1", "--disable_tqdm", "--output_dir", str(out),
    ]  # fmt: skip


def _lm_argv(out: Path, tmp_path: Path) -> list[str]:
    return [
        "--train_tokenizer", "char", "--preset", "test_deq_transformer_tiny", "--block_size", "16",
        "--per_device_train_batch_size", "4", "--max_eval_samples", "8", "--max_train_steps", "1",
        "--solver_on_failure", "ignore", "--torch_num_threads", "1", "--disable_tqdm", "--output_dir", str(out),
    ]  # fmt: skip


def _hostile_path(kind: str, tmp_path: Path) -> str:
    """A path of ``kind`` made in ``tmp_path``."""
    if kind == "missing":
        return str(tmp_path / "nö_such_ファイル")
    if kind == "empty":
        return ""
    if kind in ("directory", "empty directory"):
        (tmp_path / "a_dir").mkdir(exist_ok=True)
        return str(tmp_path / "a_dir")
    if kind == "no images":
        (tmp_path / "no_images" / "cat").mkdir(parents=True, exist_ok=True)
        (tmp_path / "no_images" / "cat" / "notes.txt").write_text("not an image")
        return str(tmp_path / "no_images")
    files = {
        "file": b"just a file\n",
        "empty file": b"",
        "binary": bytes(range(256)) * 8,
        "latin-1": "caf\xe9 na\xefve r\xe9sum\xe9\n".encode("latin-1") * 50,
        "one line": b"one short line",
    }
    path = tmp_path / f"{kind.replace(' ', '_')}.txt"
    path.write_bytes(files[kind])
    return str(path)


DATA_FLAGS = {  # (family, flag): hostile kinds
    ("mdeq", "train_dir"): ("missing", "empty", "file", "empty directory", "no images"),
    ("mdeq", "validation_dir"): ("missing", "file"),
    ("mdeq", "image_column_name"): ("missing",),
    ("mdeq", "label_column_name"): ("missing",),
    ("lm", "train_file"): ("missing", "empty", "directory", "empty file", "binary", "latin-1", "one line"),
    ("lm", "validation_file"): ("missing", "directory"),
    ("lm", "tokenizer_name"): ("missing",),
}


def _data_cases() -> list:
    return [
        case(DATA_ENTRY, flag, kind, family) for (family, flag), kinds in DATA_FLAGS.items() for kind in kinds
    ]


@pytest.mark.parametrize("family, name, kind", _data_cases())
def test_data_flag(family, name, kind, tmp_path, capsys, fresh_accelerate_state):
    out = tmp_path / "out"
    value = _hostile_path(kind, tmp_path)
    if family == "mdeq":
        argv = _mdeq_argv(out)
        if name in ("validation_dir",):
            argv += ["--train_dir", _image_folder(tmp_path)]
    else:
        argv = _lm_argv(out, tmp_path)
        if name != "train_file":
            argv += ["--train_file", str(small_text_file(tmp_path))]
        if name == "tokenizer_name":
            argv.remove("--train_tokenizer"), argv.remove("char")
    argv += [f"--{name}={value}"]
    probe_entry(
        DATA_ENTRY,
        name,
        kind,
        Path(value).name if value else value,  # what the error must show (the table shows no tmp path)
        functools.partial(script(family).main, argv),
        capsys,
        names=[f"--{name}"],
        valid=False,
        untouched=[out],
    )


def _image_folder(tmp_path: Path) -> str:
    """A valid 2-class folder of 8x8 grayscale PNGs."""
    from PIL import Image

    root = tmp_path / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("L", (8, 8), color=40 * i + (100 if label == "b" else 0)).save(
                root / label / f"{i}.png"
            )
    return str(root)


# -- the real command line ----------------------------------------------------------------------------------------
CLI_CASES = [  # (script, flag, kind, value): a flag out of its range, a data file that is missing
    (MDEQ_SCRIPT, "learning_rate", "nan", "nan"),
    (LM_SCRIPT, "train_file", "missing", "no_such_file.txt"),
]
#: flags that keep a run that was wrongly accepted short
TINY_RUN = {
    MDEQ_SCRIPT: ["--preset", "test_mdeq_tiny", "--max_train_samples", "24", "--max_eval_samples", "12"],
    LM_SCRIPT: ["--preset", "test_deq_transformer_tiny", "--train_tokenizer", "char", "--block_size", "16"],
}


def _cli_param(path: Path, name: str, kind: str, value: str):
    reason = known_reason(CLI_ENTRY, name, kind)
    marks = [pytest.mark.xfail(strict=False, reason=reason)] if reason else []
    return pytest.param(path, name, kind, value, id=f"{path.stem}-{name}-{kind}", marks=marks)


@pytest.mark.parametrize("path, name, kind, value", [_cli_param(*c) for c in CLI_CASES])
def test_command_line(path, name, kind, value, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(path), *TINY_RUN[path], "--output_dir", str(out), "--max_train_steps", "1"]
    cmd += ["--disable_tqdm", f"--{name}={value}"]
    proc = subprocess.run(cmd, env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    if proc.returncode == 0:
        record(
            CLI_ENTRY, name, kind, value, "failed", "exit status 0: trained with a value that cannot be right"
        )
    elif proc.returncode != 2 or "Traceback" in proc.stderr or len(lines) != 1:
        record(CLI_ENTRY, name, kind, value, "failed", f"exit {proc.returncode}: {proc.stderr[-300:]}")
    elif f"--{name}" not in lines[0] or value.lstrip("-") not in lines[0] or out.exists():
        record(CLI_ENTRY, name, kind, value, "failed", f"unclear or wrote {out}: {lines[0]}")
    else:
        record(CLI_ENTRY, name, kind, value, "refused", lines[0])


# -- accepted boundary values give a correct run -------------------------------------------------------------------
RUN_ENTRY = "boundary values (main, in-process run)"
BOUNDARY_VALUES = [  # (flag, value): legal but extreme; the run must train, save finite weights, report finite
    ("weight_decay", "0"),
    ("max_grad_norm", "0"),
    ("solver_tol", "0"),
    ("learning_rate", "1e-300"),
    ("num_warmup_steps", "1000000000000"),
    ("logging_steps", "1000000000000"),
    ("eval_steps", "1000000000000"),
    ("checkpointing_steps", "1000000000000"),
    ("max_train_samples", "1000000000000"),
    ("per_device_train_batch_size", "1000000000000"),
    ("per_device_eval_batch_size", "1000000000000"),
    ("unrolled_warmup_steps", "1000000000000"),
    ("max_nonfinite_steps", "1000000000000"),
    ("gradient_accumulation_steps", "1000000000000"),
]


RUN_SECONDS = 120.0  # a whole (tiny) run: imports, data, 1 step, evaluation, saving


@settings(BATTERY, deadline=None)
@given(flag_value=st.sampled_from(BOUNDARY_VALUES))
def test_accepted_boundary_value_runs(flag_value, tmp_path_factory, capsys):
    """A legal but extreme value (a huge logging interval, a zero clip) trains, saves and reports."""

    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    name, value = flag_value
    out = tmp_path_factory.mktemp("run") / "out"
    argv = _mdeq_argv(out) + [f"--{name}={value}"]
    AcceleratorState._reset_state(True)
    result, err, seconds = timed(functools.partial(script("mdeq").main, argv), RUN_SECONDS)
    AcceleratorState._reset_state(True)
    if err is not None:
        record(
            RUN_ENTRY, name, "boundary", value, "failed", f"{type(err).__name__} after {seconds:.1f} s: {err}"
        )
    capsys.readouterr()
    weights = load_file(out / "model.safetensors") if (out / "model.safetensors").is_file() else {}
    metrics = {k: v for k, v in result.items() if isinstance(v, float)}
    if not weights:
        problem = "no model.safetensors"
    elif not all(torch.isfinite(w).all() for w in weights.values()):
        problem = "non-finite weights saved"
    elif not metrics or not all(math.isfinite(v) for v in metrics.values()):
        problem = f"results {metrics}"
    else:
        problem = ""
    record(RUN_ENTRY, name, "boundary", value, "failed" if problem else "handled", problem)
