"""The shared training loop as a real 2-process CPU job, for both families.

``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`` (gloo). Other spellings silently
start one process, so the test asserts that two ran: ``all_results.json`` says ``num_processes == 2`` and each rank
wrote its own per-step log (``--log_file``; rank 1 writes ``<log_file>.rank1``) with different losses (different
data shards). Both ranks end with identical weights (the SHA-256 of the parameters and of the whole state dict,
written by every rank at the end), and evaluation gathers the whole split exactly once (``eval_num_examples`` in
``all_results.json`` equals the split size, chosen so that the last batch is padded across ranks; for the
classifier the gathered accuracy is the saved model's, recomputed in one process). The classifier's job probes at
every step (``--probe_steps 1``): only the main process probes, and the ranks stay in step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from script_loading import load_script
from tiny_runs import (
    FAMILIES,
    LM_SCRIPT,
    MDEQ_SCRIPT,
    family_args,
    free_port,
    read_log,
    run_checked,
    script_env,
)

from hf_deq.tasks.image_classification import load_images

STEPS = 3


def _launch(script: Path, args: list[str]):
    env = script_env()
    env["ACCELERATE_USE_CPU"] = "true"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [
        *accelerate,
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(script), *args,
    ]  # fmt: skip
    return run_checked(cmd, env, timeout=400)


def _check_ranks(log: Path, results: dict) -> list[dict]:
    assert results["num_processes"] == 2, "accelerate started one process: the launch spelling is wrong"
    rank0, rank1 = read_log(log), read_log(Path(f"{log}.rank1"))
    for index, records in enumerate((rank0, rank1)):
        assert {r["process_index"] for r in records} == {index}
        assert {r["num_processes"] for r in records} == {2}
        assert [r["step"] for r in records if "step" in r] == list(range(1, STEPS + 1))
    losses0 = [r["loss"] for r in rank0 if "step" in r]
    losses1 = [r["loss"] for r in rank1 if "step" in r]
    assert losses0 != losses1, "both ranks saw the same batches: not data parallel"
    end0, end1 = rank0[-1], rank1[-1]
    assert end0["event"] == end1["event"] == "end"
    assert end0["parameters_sha256"] == end1["parameters_sha256"], "the ranks' weights diverged"
    assert end0["state_dict_sha256"] == end1["state_dict_sha256"], "the ranks' buffers diverged"
    return rank0


def _saved_parameters_sha256(model) -> str:
    from hf_deq.training import state_fingerprint

    return state_fingerprint(model)["parameters_sha256"]


def _saved_model(family: str, out: Path):
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    auto = AutoModelForImageClassification if family == "mdeq" else AutoModelForCausalLM
    return auto.from_pretrained(out).eval()


def _mdeq_accuracy_of_saved_model(model, out: Path, args: list[str]) -> tuple[int, int]:
    """(correct, total) of the saved model over the evaluation split, computed here in one process."""
    from transformers import AutoImageProcessor

    script = load_script("train_mdeq_classifier")
    raw = load_images(script.parse_args([*args, "--overwrite_output_dir"]))
    validation = raw.datasets["validation"]
    processor = AutoImageProcessor.from_pretrained(out)
    pixels = processor(list(validation[raw.image_column]), return_tensors="pt")["pixel_values"]
    labels = torch.tensor(list(validation[raw.label_column]))
    with torch.no_grad():
        predictions = model(pixel_values=pixels).logits.argmax(-1)
    return int((predictions == labels).sum()), len(labels)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_training_script_as_a_two_process_job(family, tmp_path, fresh_accelerate_state):
    out, log = tmp_path / "out", tmp_path / "steps.jsonl"
    args = family_args(family, out, tmp_path, "--log_file", str(log), steps=STEPS)
    if family == "mdeq":
        # 37 evaluation images in batches of 8 per rank: the last round is padded with repeated samples; tol=0:
        # every sample runs exactly solver_eval_max_iter iterations, whatever the batch it is in.
        # --probe_steps 1: the main process probes its unwrapped model at every step, the other rank waits at the
        # next all-reduce (probing changes no weight: tests/training/test_probe_steps.py).
        args = [*args, "--max_eval_samples", "37", "--per_device_eval_batch_size", "8", "--solver_tol", "0"]
        args += ["--probe_steps", "1"]
        args[args.index("--per_device_train_batch_size") + 1] = "8"
        split = 37
    else:
        # 7 validation blocks in batches of 2 per rank: the last round is padded.
        args = [*args, "--max_eval_samples", "7", "--per_device_eval_batch_size", "2"]
        split = 7
    _launch(MDEQ_SCRIPT if family == "mdeq" else LM_SCRIPT, args)
    results = json.loads((out / "all_results.json").read_text())
    rank0 = _check_ranks(log, results)
    assert results["eval_num_examples"] == split
    assert results["train_steps"] == STEPS and results["skipped_nonfinite_steps"] == 0
    model = _saved_model(family, out)
    assert _saved_parameters_sha256(model) == rank0[-1]["parameters_sha256"]  # the saved model is the ranks'
    if family == "mdeq":
        rank1 = read_log(Path(f"{log}.rank1"))
        assert [r["step"] for r in rank0 if "grad_alignment_cosine" in r] == list(range(1, STEPS + 1))
        assert not any("grad_alignment_cosine" in r for r in rank1), "only the main process probes"
        assert results["probe_count"] == STEPS
        # the gathered accuracy is that of the saved model, each image counted once
        correct, total = _mdeq_accuracy_of_saved_model(model, out, args)
        assert total == split and round(results["eval_accuracy"] * split) == correct
