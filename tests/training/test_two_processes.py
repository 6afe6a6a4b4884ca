"""Each training script as a real 2-process CPU job.

``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`` (gloo). Other spellings silently
start one process, so the test asserts that two ran: ``all_results.json`` says ``num_processes == 2`` and each rank
wrote its own per-step log (``--log_file``; rank 1 writes ``<log_file>.rank1``) with different losses (different
data shards). Both ranks end with identical weights (the SHA-256 of the parameters and of the whole state dict,
written by every rank at the end), and evaluation gathers the whole split exactly once (``eval_num_examples`` in
``all_results.json`` equals the split size, chosen so that the last batch is padded across ranks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from script_loading import load_script
from tiny_runs import (
    LM_SCRIPT,
    MDEQ_SCRIPT,
    free_port,
    lm_args,
    mdeq_args,
    read_log,
    run_checked,
    script_env,
    small_text_file,
)

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
    from hf_deq.training_utils import state_fingerprint

    return state_fingerprint(model)["parameters_sha256"]


@pytest.mark.slow
def test_mdeq_script_as_a_two_process_job(tmp_path, fresh_accelerate_state):
    out, log = tmp_path / "out", tmp_path / "steps.jsonl"
    args = mdeq_args(out, "--log_file", str(log), steps=STEPS)
    # 37 evaluation images in batches of 8 per rank: the last round is padded with repeated samples.
    args = [*args, "--max_eval_samples", "37", "--per_device_eval_batch_size", "8", "--solver_tol", "0"]
    args[args.index("--per_device_train_batch_size") + 1] = "8"
    _launch(MDEQ_SCRIPT, args)
    results = json.loads((out / "all_results.json").read_text())
    rank0 = _check_ranks(log, results)
    assert results["eval_num_examples"] == results["eval_samples"] == 37
    assert results["train_steps"] == STEPS

    # The gathered accuracy is that of the saved model over the 37 images, each counted once (tol=0: every
    # sample runs exactly solver_eval_max_iter iterations, whatever the batch it is in).
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    script = load_script("train_mdeq_classifier")
    parsed = script.parse_args(args)
    data, image_column, label_column, _ = script.load_datasets(parsed)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert _saved_parameters_sha256(model) == rank0[-1]["parameters_sha256"]  # the saved model is the ranks'
    processor = AutoImageProcessor.from_pretrained(out)
    pixels = processor(list(data["validation"][image_column]), return_tensors="pt")["pixel_values"]
    labels = torch.tensor(list(data["validation"][label_column]))
    with torch.no_grad():
        predictions = model(pixel_values=pixels).logits.argmax(-1)
    assert len(labels) == 37
    assert round(results["eval_accuracy"] * 37) == int((predictions == labels).sum())


@pytest.mark.slow
def test_lm_script_as_a_two_process_job(tmp_path):
    out, log = tmp_path / "out", tmp_path / "steps.jsonl"
    text = small_text_file(tmp_path)
    # 7 validation blocks in batches of 2 per rank: the last round is padded.
    args = lm_args(out, text, "--log_file", str(log), "--max_eval_samples", "7", steps=STEPS)
    args[args.index("--per_device_eval_batch_size") + 1] = "2"
    _launch(LM_SCRIPT, args)
    results = json.loads((out / "all_results.json").read_text())
    rank0 = _check_ranks(log, results)
    assert results["eval_num_examples"] == 7
    assert results["train_steps"] == STEPS and results["skipped_nonfinite_steps"] == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert _saved_parameters_sha256(model) == rank0[-1]["parameters_sha256"]  # the saved model is the ranks'
