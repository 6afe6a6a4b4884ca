"""FSDP2 through Accelerate: both training scripts as real 2-process CPU jobs (gloo), launched with
``scripts/configs/accelerate_fsdp2.yaml``.

Accelerate 1.15 never selects FSDP for a CPU job (it trains with DDP instead, silently), while torch's
``fully_shard`` runs on CPU with gloo; the jobs therefore go through ``tests/helpers/fsdp_on_cpu.py``, which makes
that one decision and leaves the rest to Accelerate's FSDP2 code (``fully_shard`` in ``prepare``, DTensor
gradient clipping, sharded ``save_state``/``load_state``, the full ``get_state_dict``). Per family, one
uninterrupted job (4 steps, a checkpoint every 2, gradient clipping) is shared by two tests:

- two processes ran on different data, the checkpoints are sharded FSDP checkpoints, both ranks end with the same
  full weights and buffers (BatchNorm statistics included), and the saved ``model.safetensors`` holds them;
- a job resumed from the step-2 FSDP checkpoint logs, on each rank, the losses of the uninterrupted job for steps
  3 and 4, and ends with the same weights.

Also: the config parses into an FSDP2 plugin, and the training pieces that FSDP changes (the gradient verdict
over shards, ``BufferSync``, the weights fingerprint) in a 2-process gloo group."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_runs import (
    LM_SCRIPT,
    MDEQ_SCRIPT,
    REPO,
    free_port,
    lm_args,
    mdeq_args,
    read_log,
    run_checked,
    script_env,
    small_text_file,
    step_losses,
)

from hf_deq.training.step import BufferSync, gradients_are_finite
from hf_deq.training.tracking import state_fingerprint

CONFIG = REPO / "scripts" / "configs" / "accelerate_fsdp2.yaml"
LAUNCHER = REPO / "tests" / "helpers" / "fsdp_on_cpu.py"
STEPS = 4


def test_the_fsdp2_config_is_accepted(monkeypatch):
    """``accelerate launch --config_file`` reads it as a 2-process FSDP job, and the environment it gives the
    processes builds an FSDP2 plugin: one unit per model (no wrapping), sharded checkpoints."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 2
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is None
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT


# -- the training pieces that FSDP changes, in a 2-process gloo group ----------------------------------------
def _sharded(module: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(module)
    return module


def _both_ranks(value: str) -> list[str]:
    gathered = [None, None]
    dist.all_gather_object(gathered, value)
    return gathered


def _pieces_worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    try:
        # A NaN in one rank's shard of a gradient: both ranks must skip the step.
        model = _sharded(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)))
        model(torch.randn(3, 4)).sum().backward()
        assert gradients_are_finite(model.parameters())
        if rank == 1:
            model[0].weight.grad.to_local().fill_(float("nan"))
        assert not gradients_are_finite(model.parameters()), f"rank {rank} would take the step"

        # BatchNorm statistics follow each rank's data under FSDP; BufferSync makes them their mean.
        torch.manual_seed(rank)
        bn = _sharded(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)))
        bn(torch.randn(8, 3) + 5 * rank)
        running = bn[1].running_mean.clone()
        others = [torch.empty_like(running) for _ in range(2)]
        dist.all_gather(others, running)
        assert not torch.equal(others[0], others[1])
        BufferSync(bn)()
        torch.testing.assert_close(bn[1].running_mean, (others[0] + others[1]) / 2)
        assert BufferSync(torch.nn.BatchNorm1d(4)).buffers == []  # not sharded: DDP keeps buffers equal

        # The fingerprint after a no-grad forward (the unsharded parameters are then plain tensors) is the same
        # on both ranks and leaves the model able to reshard and train on.
        with torch.no_grad():
            model(torch.randn(3, 4))
        prints = _both_ranks(json.dumps(state_fingerprint(model)))
        assert prints[0] == prints[1]
        model.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        assert prints[0] == json.dumps(state_fingerprint(model))  # the weights did not move: same digest
        # Gloo's barrier waits for every collective still queued (FSDP's reduce-scatter of the last backward).
        dist.barrier()
        del model, bn
        gc.collect()
    finally:
        dist.destroy_process_group()


def _pieces_process(rank: int, init_file: str) -> None:
    """Run the checks, then leave without interpreter finalisation. Gloo's worker threads can still hold work
    objects whose tensors need the GIL when they are freed during finalisation, which aborts the process
    ("terminate called without an active exception", seen twice on the 2-core CI machine; pytorch/pytorch#179291).
    A failed check raises before this point and is reported by ``mp.spawn`` as usual."""
    _pieces_worker(rank, init_file)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.slow
def test_fsdp_pieces_in_a_two_process_group(tmp_path):
    mp.spawn(_pieces_process, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)


# -- the training scripts under FSDP2 --------------------------------------------------------------------------
def _script_args(family: str, directory: Path, out: Path, log: Path, *extra: str) -> tuple[Path, list[str]]:
    common = ["--log_file", str(log), "--max_grad_norm", "1.0", "--checkpointing_steps", "2", *extra]
    if family == "mdeq":
        return MDEQ_SCRIPT, mdeq_args(out, *common, steps=STEPS)
    return LM_SCRIPT, lm_args(out, small_text_file(directory), *common, steps=STEPS)


def _launch_fsdp(script: Path, args: list[str]):
    env = script_env()
    env["ACCELERATE_USE_CPU"] = "true"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [
        *accelerate, "--config_file", str(CONFIG), "--main_process_port", str(free_port()),
        str(LAUNCHER), str(script), *args,
    ]  # fmt: skip
    return run_checked(cmd, env, timeout=400)


def _ranks(log: Path) -> tuple[list[dict], list[dict]]:
    return read_log(log), read_log(Path(f"{log}.rank1"))


@pytest.fixture(scope="module", params=["mdeq", "lm"])
def uninterrupted(request, tmp_path_factory):
    """``(family, directory, output_dir, log)`` of an uninterrupted 4-step FSDP2 job."""
    directory = tmp_path_factory.mktemp(f"fsdp_{request.param}")
    out, log = directory / "out", directory / "steps.jsonl"
    _launch_fsdp(*_script_args(request.param, directory, out, log))
    return request.param, directory, out, log


@pytest.mark.slow
def test_fsdp2_job_ends_with_the_same_full_weights_on_both_ranks(uninterrupted):
    family, _, out, log = uninterrupted
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["train_steps"] == STEPS
    rank0, rank1 = _ranks(log)
    assert {r["process_index"] for r in rank0} == {0} and {r["process_index"] for r in rank1} == {1}
    assert step_losses(rank0) != step_losses(rank1), "both ranks saw the same batches: not data parallel"
    checkpoint = out / "step_2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir(), "not an FSDP checkpoint: FSDP was not used"
    assert not (checkpoint / "model.safetensors").exists()

    end0, end1 = rank0[-1], rank1[-1]
    assert end0["event"] == end1["event"] == "end"
    assert end0["parameters_sha256"] == end1["parameters_sha256"], "the ranks' full weights differ"
    assert end0["state_dict_sha256"] == end1["state_dict_sha256"], "the ranks' buffers differ"

    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    auto = AutoModelForImageClassification if family == "mdeq" else AutoModelForCausalLM
    saved = auto.from_pretrained(out)
    assert state_fingerprint(saved) == {k: end0[k] for k in ("parameters_sha256", "state_dict_sha256")}
    assert json.loads((out / "config.json").read_text())["architectures"] == [type(saved).__name__]


@pytest.mark.slow
def test_resume_from_an_fsdp2_checkpoint_reproduces_the_uninterrupted_job(uninterrupted):
    family, directory, out, log = uninterrupted
    resumed_out, resumed_log = directory / "resumed", directory / "resumed.jsonl"
    resumed_out.mkdir()
    shutil.copytree(out / "step_2", resumed_out / "step_2")
    _launch_fsdp(
        *_script_args(family, directory, resumed_out, resumed_log, "--resume_from_checkpoint", "latest")
    )
    for full, resumed in zip(_ranks(log), _ranks(resumed_log)):
        expected = {step: loss for step, loss in step_losses(full).items() if step > 2}
        assert step_losses(resumed) == expected
        assert resumed[-1]["parameters_sha256"] == full[-1]["parameters_sha256"]
        assert resumed[-1]["state_dict_sha256"] == full[-1]["state_dict_sha256"]
