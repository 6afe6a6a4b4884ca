"""Test helpers: tiny models and inputs, the training scripts (in-process and as subprocesses), their per-step
JSONL logs. ``tests/helpers`` is on ``sys.path`` (``tests/conftest.py``)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
from pathlib import Path

import torch

import hf_deq
from hf_deq import create_config

REPO = Path(__file__).resolve().parents[2]

SCRIPTS = REPO / "scripts"
MDEQ_SCRIPT = SCRIPTS / "train_mdeq_classifier.py"
LM_SCRIPT = SCRIPTS / "train_deq_lm.py"
ESTIMATORS = ("implicit", "upg", "npg", "one_step", "unrolled")

# Runs a script as ``__main__`` after making torch deterministic (CPU, one thread): the scripts themselves
# need no determinism flag for the crash-and-resume comparison.
DETERMINISTIC_LAUNCHER = (
    "import runpy, sys, torch; torch.use_deterministic_algorithms(True); torch.set_num_threads(1); "
    "script = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')"
)


# -- tiny models -------------------------------------------------------------------------------------------
def tiny_mdeq_config(**overrides):
    return create_config("test_mdeq_tiny", **{"solver_on_failure": "ignore", **overrides})


def tiny_lm_config(**overrides):
    return create_config("test_deq_transformer_tiny", **{"solver_on_failure": "ignore", **overrides})


def tiny_model(kind: str, seed: int = 0, **overrides):
    """``kind`` is ``"mdeq"`` (image classifier), ``"lm"`` (causal LM) or ``"lm_adaptive"`` (causal LM with
    adaptive embeddings)."""
    torch.manual_seed(seed)
    if kind == "mdeq":
        return hf_deq.MDEQForImageClassification(tiny_mdeq_config(**overrides))
    if kind == "lm_adaptive":
        config = create_config(
            "test_deq_transformer_tiny_adaptive", **{"solver_on_failure": "ignore", **overrides}
        )
        return hf_deq.DEQTransformerForCausalLM(config)
    return hf_deq.DEQTransformerForCausalLM(tiny_lm_config(**overrides))


def tiny_inputs(kind: str, config, batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "mdeq":
        side = config.image_size
        return {
            "pixel_values": torch.randn(batch, config.num_channels, side, side, generator=g),
            "labels": torch.randint(0, config.num_labels, (batch,), generator=g),
        }
    ids = torch.randint(0, config.vocab_size, (batch, 6), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


# -- training scripts --------------------------------------------------------------------------------------
def mdeq_args(output_dir: Path, *extra: str, steps: int = 4) -> list[str]:
    """Tiny MDEQ-on-digits run: seconds on one CPU thread."""
    return [
        "--preset", "test_mdeq_tiny",
        "--dataset_name", "digits",
        "--max_train_samples", "48",
        "--max_eval_samples", "24",
        "--per_device_train_batch_size", "12",
        "--per_device_eval_batch_size", "24",
        "--max_train_steps", str(steps),
        "--learning_rate", "3e-3",
        "--solver_on_failure", "ignore",
        "--seed", "3",
        "--torch_num_threads", "1",
        "--output_dir", str(output_dir),
        "--disable_tqdm",
        *extra,
    ]  # fmt: skip


def small_text_file(directory: Path) -> Path:
    """About 8,000 characters of English that ships with Python (nothing downloaded)."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))[:8000]
    path = directory / "corpus.txt"
    path.write_text(text)
    return path


def lm_args(output_dir: Path, text_file: Path, *extra: str, steps: int = 4) -> list[str]:
    """Tiny character-level DEQ-Transformer run."""
    return [
        "--train_file", str(text_file),
        "--train_tokenizer", "char",
        "--preset", "test_deq_transformer_tiny",
        "--block_size", "16",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--max_eval_samples", "16",
        "--max_train_steps", str(steps),
        "--logging_steps", "1",
        "--solver_on_failure", "ignore",
        "--torch_num_threads", "1",
        "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


#: the model families the shared training loop is tested with
FAMILIES = ("mdeq", "lm")
FAMILY_SCRIPTS = {"mdeq": "train_mdeq_classifier", "lm": "train_deq_lm"}


def family_args(family: str, output_dir: Path, tmp_path: Path, *extra: str, steps: int = 4) -> list[str]:
    """``mdeq_args`` or ``lm_args`` (on ``small_text_file(tmp_path)``)."""
    if family == "mdeq":
        return mdeq_args(output_dir, *extra, steps=steps)
    return lm_args(output_dir, small_text_file(tmp_path), "--disable_tqdm", *extra, steps=steps)


def patch_training_loss(monkeypatch, family: str, wrap) -> None:
    """Replace the family's loss function by ``wrap(original)``."""
    if family == "mdeq":
        cls = hf_deq.MDEQForImageClassification
        monkeypatch.setattr(cls, "_classification_loss", wrap(cls._classification_loss))
    else:
        from hf_deq.models.deq_transformer import modeling_deq_transformer as modeling

        monkeypatch.setattr(modeling, "causal_lm_loss", wrap(modeling.causal_lm_loss))


def script_env() -> dict[str, str]:
    """Environment of a script subprocess: offline, one thread, no tokenizer threads."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def run_checked(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_log(path: Path) -> list[dict]:
    """The JSONL written by ``--log_file`` (NaN losses are written as ``NaN``, which ``json`` reads back)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def step_losses(records: list[dict]) -> dict[int, float]:
    """``{step: loss}`` of the per-step records (the final ``event: end`` record excluded)."""
    return {r["step"]: r["loss"] for r in records if "step" in r}


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def isfinite(x: float) -> bool:
    return math.isfinite(x)
