"""The shared loop's guard against non-finite steps, for both families.

A step whose loss or gradient is not finite, or whose update made a weight non-finite, is skipped (weights,
optimizer state and buffers such as BatchNorm statistics untouched or rolled back), counted in the per-step log
and in ``all_results.json``, and training goes on; after ``--max_nonfinite_steps`` such steps in a row the run
stops with one ``error:`` line (no traceback, exit status 1), the last checkpoint stays what it was and no final
model is written. A skipped batch still counts as a step, so the run's position (and a resume from it) is the
same as without the skip."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file
from script_loading import load_script
from tiny_runs import FAMILIES, FAMILY_SCRIPTS, family_args, patch_training_loss, read_log

import hf_deq


def _nan_from(call: int):
    """A loss-function wrapper: every training call from the ``call``-th on returns NaN."""

    def wrap(original):
        counter = {"n": 0}

        def wrapped(*args, **kwargs):
            loss = original(*args, **kwargs)
            counter["n"] += 1
            return loss * math.nan if counter["n"] >= call and torch.is_grad_enabled() else loss

        return wrapped

    return wrap


def _on_second_call(change):
    """A loss-function wrapper: its second call, if it is a training call (grad enabled), returns ``change``."""

    def wrap(original):
        counter = {"n": 0}

        def wrapped(*args, **kwargs):
            loss = original(*args, **kwargs)
            counter["n"] += 1
            return change(loss) if counter["n"] == 2 and torch.is_grad_enabled() else loss

        return wrapped

    return wrap


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward: what a diverging backward solve looks like."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def _stops_with_one_error_line(run, capsys, pattern: str) -> None:
    """``run()`` ends the script with exit status 1 and one ``error:`` line matching ``pattern``."""
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and re.search(pattern, lines[0]) and "Traceback" not in err, err


def _assert_finite_model(path, batchnorm_steps: int | None = None) -> None:
    weights = load_file(path)
    assert all(torch.isfinite(t).all() for t in weights.values())
    tracked = weights.get("mdeq.stem.norm1.num_batches_tracked")
    if tracked is not None and batchnorm_steps is not None:
        assert int(tracked) == batchnorm_steps  # the skipped forward's BatchNorm update was rolled back


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_a_nonfinite_step_is_skipped_counted_and_rolled_back(
    family, bad, tmp_path, fresh_accelerate_state, monkeypatch
):
    change = (lambda x: x * math.nan) if bad == "loss" else _NaNGradient.apply
    patch_training_loss(monkeypatch, family, _on_second_call(change))
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    extra = ["--log_file", str(log), "--max_nonfinite_steps", "2"]
    if bad == "loss":
        extra.append("--with_tracking")  # the trackers see the run too
    results = load_script(FAMILY_SCRIPTS[family]).main(family_args(family, out, tmp_path, *extra, steps=4))
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["skipped_nonfinite_steps"] == 1 == results["skipped_nonfinite_steps"]
    assert (
        saved["train_steps"] == 4 and math.isfinite(saved["train_loss"]) and math.isfinite(saved["eval_loss"])
    )
    records = [r for r in read_log(log) if "step" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the skipped batch still counts as a step
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 1, 1, 1]
    if bad == "loss":
        assert math.isnan(records[1]["loss"]) and all(
            math.isfinite(r["loss"]) for r in records if r["step"] != 2
        )
        project = load_script(FAMILY_SCRIPTS[family]).TASK.project_name
        assert list((out / project).glob("**/events.out.tfevents.*")), "no TensorBoard events"
    else:
        assert all(math.isfinite(r["loss"]) for r in records)  # the loss itself was finite throughout
    _assert_finite_model(out / "model.safetensors", batchnorm_steps=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_nonfinite_steps_in_a_row_stop_the_run_keeping_the_last_checkpoint(
    family, tmp_path, fresh_accelerate_state, monkeypatch, capsys
):
    """Losses are finite for steps 1-2, NaN from step 3 on: steps 3 and 4 are skipped (``step_4`` is still written,
    with the unchanged weights of step 2), step 5 stops the run; no final model is written."""
    patch_training_loss(monkeypatch, family, _nan_from(3))
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    extra = ["--checkpointing_steps", "2", "--max_nonfinite_steps", "3", "--log_file", str(log)]
    _stops_with_one_error_line(
        lambda: load_script(FAMILY_SCRIPTS[family]).main(family_args(family, out, tmp_path, *extra, steps=8)),
        capsys,
        r"error: 3 training steps in a row had a non-finite loss; stopping",
    )
    records = read_log(log)
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 0, 1, 2]  # step 5 raised before its line
    assert all(math.isfinite(r["loss"]) for r in records[:2]) and all(
        math.isnan(r["loss"]) for r in records[2:]
    )
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step_")) == ["step_2", "step_4"]
    assert not list(out.glob("*.tmp"))
    a, b = load_file(out / "step_2" / "model.safetensors"), load_file(out / "step_4" / "model.safetensors")
    for key in a:
        assert torch.isfinite(a[key]).all(), key
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)  # skipped steps changed nothing


@pytest.mark.parametrize("family", FAMILIES)
def test_an_absurd_learning_rate_stops_cleanly(family, tmp_path, fresh_accelerate_state, capsys):
    """A real divergence, nothing patched: AdamW with lr=1e30 makes the weights overflow, every later loss is
    NaN; the run stops after 2 of them with the clear message; the step-1 checkpoint is complete."""
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    extra = ["--learning_rate", "1e30", "--lr_scheduler_type", "constant", "--checkpointing_steps", "1"]
    extra += ["--max_nonfinite_steps", "2", "--log_file", str(log), "--max_grad_norm", "0"]
    _stops_with_one_error_line(
        lambda: load_script(FAMILY_SCRIPTS[family]).main(family_args(family, out, tmp_path, *extra, steps=6)),
        capsys,
        "non-finite (loss|gradient|weight after the update); stopping",
    )
    records = read_log(log)
    assert math.isfinite(records[0]["loss"]) and records[-1]["skipped_nonfinite_steps"] >= 1
    assert (out / "step_1" / "model.safetensors").is_file() and not list(out.glob("*.tmp"))
    for checkpoint in out.glob("step_*"):  # a skipped step must not leave NaN BatchNorm statistics behind
        for key, value in load_file(checkpoint / "model.safetensors").items():
            if "running_" in key:
                assert torch.isfinite(value).all(), (checkpoint.name, key)
    assert not (out / "all_results.json").exists()


def test_step_guard_refuses_non_finite_gradients_and_counts_runs_of_bad_steps():
    from hf_deq.training import NonFiniteStepGuard, gradients_are_finite

    guard = NonFiniteStepGuard(max_in_a_row=4)
    weight = torch.nn.Parameter(torch.ones(3))
    for bad in (False, True, False, True, True):
        weight.grad = torch.full((3,), math.nan if bad else 1.0)
        assert guard.check_loss(torch.tensor(1.0))  # the loss is finite every time
        assert guard.check_gradients([weight]) is not bad
        if not bad:
            assert guard.check_weights([weight])  # the updated weights are finite: the run of bad steps ends
    assert (guard.skipped, guard.skipped_for_gradients, guard.in_a_row) == (3, 3, 2)
    assert not guard.check_loss(torch.tensor(math.inf))  # a bad loss continues the run of bad steps ...
    assert guard.in_a_row == 3 and guard.skipped == 4
    weight.grad = torch.tensor([1.0, math.inf, 1.0])
    with pytest.raises(RuntimeError, match="4 training steps in a row had a non-finite gradient; stopping"):
        guard.check_gradients([weight])
    weight.grad = None
    assert gradients_are_finite([weight])  # parameters without a gradient are fine
    scaled = NonFiniteStepGuard(inspect_gradients=False)  # fp16: the scaler decides
    weight.grad = torch.full((3,), math.nan)
    assert scaled.check_gradients([weight]) and scaled.skipped == 0
    assert hf_deq.training.NonFiniteStepGuard is NonFiniteStepGuard


@pytest.mark.parametrize("family", FAMILIES)
def test_an_update_that_makes_a_weight_nonfinite_is_rolled_back(
    family, tmp_path, fresh_accelerate_state, capsys
):
    """Nothing patched: SGD with weight decay 1e30 and lr 1e10 (each accepted) turns every decayed weight into
    ±inf (1e10 * 1e30 * w overflows float32). Each such update is rolled back (weights, momentum, BatchNorm
    buffers), counted, and after 3 in a row the run stops with one error line; every checkpoint holds the
    untouched, finite start."""
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    extra = ["--optimizer", "sgd", "--learning_rate", "1e10", "--weight_decay", "1e30"]
    extra += ["--lr_scheduler_type", "constant"]
    extra += ["--checkpointing_steps", "1", "--max_nonfinite_steps", "3", "--log_file", str(log)]
    extra += ["--max_grad_norm", "0"]
    _stops_with_one_error_line(
        lambda: load_script(FAMILY_SCRIPTS[family]).main(family_args(family, out, tmp_path, *extra, steps=6)),
        capsys,
        "error: 3 training steps in a row had a non-finite weight after the update; stopping",
    )
    records = [r for r in read_log(log) if "step" in r]
    assert [r["skipped_nonfinite_steps"] for r in records] == [1, 2]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_1", "step_2"]
    first, second = (load_file(out / name / "model.safetensors") for name in ("step_1", "step_2"))
    for key, value in first.items():
        assert torch.isfinite(value).all(), key
        torch.testing.assert_close(second[key], value, rtol=0, atol=0, msg=key)  # nothing changed
    tracked = first.get("mdeq.stem.norm1.num_batches_tracked")
    assert (
        tracked is None or int(tracked) == 0
    )  # the BatchNorm statistics of the forward were rolled back too
    assert not (out / "model.safetensors").exists()


def test_update_rollback_restores_weights_and_optimizer_state_exactly():
    from hf_deq.training.step import UpdateRollback

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    rollback = UpdateRollback(model, optimizer)

    def step(lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        model(torch.randn(4, 3, dtype=torch.float64)).pow(2).sum().backward()
        rollback.save()
        optimizer.step()
        optimizer.zero_grad()

    start = [p.detach().clone() for p in model.parameters()]
    step(math.inf)  # the first step creates the optimizer state: rolled back, it is gone again
    assert not all(bool(torch.isfinite(p).all()) for p in model.parameters())
    rollback.restore()
    assert not optimizer.state
    for p, w in zip(model.parameters(), start):
        torch.testing.assert_close(p, w, rtol=0, atol=0)
    step(1e-2)
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in optimizer.state[model.weight].items()}
    step(math.inf)
    rollback.restore()
    for p, w in zip(model.parameters(), weights):
        torch.testing.assert_close(p, w, rtol=0, atol=0)
    for key, value in optimizer.state[model.weight].items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_a_model_with_nonfinite_weights_is_never_saved(
    checkpointing, tmp_path, fresh_accelerate_state, monkeypatch, capsys
):
    """The last line of defence, should the step guard ever miss one (here it is blinded): a checkpoint or final
    model with a NaN/inf weight is refused with one error line, and nothing of it is written."""
    import hf_deq.training.step as step_module

    monkeypatch.setattr(step_module, "tensors_are_finite", lambda tensors: True)
    out = tmp_path / "run"
    extra = ["--optimizer", "sgd", "--learning_rate", "1e10", "--weight_decay", "1e30"]
    extra += ["--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--max_nonfinite_steps", "5"]
    if checkpointing:
        extra += ["--checkpointing_steps", "1"]
    _stops_with_one_error_line(
        lambda: load_script("train_mdeq_classifier").main(
            family_args("mdeq", out, tmp_path, *extra, steps=2)
        ),
        capsys,
        "error: refusing to save (checkpoint step_1|the model into .*): the model holds non-finite values \\(mdeq",
    )
    assert not list(out.glob("step_*")) and not (out / "model.safetensors").exists()
