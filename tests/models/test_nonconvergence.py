"""Non-convergence and divergence.

Model level: a solver that misses ``solver_tol`` is reported per sample (``solver_residual > tol``) and, by
``solver_on_failure``, warned about once per model over many forwards, raised as ``DEQConvergenceError``, or
ignored. Script level: a step whose loss is not finite is skipped and counted (per-step JSONL log and
``all_results.json``); after ``--max_nonfinite_steps`` such steps in a row the run stops with a clear message and
the last checkpoint stays what it was."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_loading import load_script
from tiny_runs import (
    lm_args,
    mdeq_args,
    read_log,
    small_text_file,
    tiny_inputs,
    tiny_model,
)

import hf_deq
from hf_deq.deq import DEQConvergenceError

TINYSHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"

TIGHT = {"solver_max_iter": 1, "solver_eval_max_iter": 1, "solver_tol": 1e-12}


def _deq_warnings(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, RuntimeWarning) and "DEQ solver" in str(w.message)]


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_unconverged_solver_warns_once_and_reports_per_sample_residual(kind):
    model = tiny_model(kind, solver_on_failure="warn", **TIGHT)
    inputs = tiny_inputs(kind, model.config, batch=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the model's own once-only logic is what is tested
        for mode in ("train", "train", "eval", "eval", "train"):
            model.train(mode == "train")
            with torch.set_grad_enabled(mode == "train"):
                outputs = model(**inputs)
            if mode == "train":
                outputs.loss.backward()
            residual = outputs.solver_residual
            assert residual.shape == (3,), residual.shape
            assert bool((residual > model.config.solver_tol).all()), residual
            assert bool((outputs.solver_nstep <= 1).all()), outputs.solver_nstep
            assert math.isfinite(float(outputs.loss))
    found = _deq_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert "did not reach" in message and "3/3 samples" in message and "warned once" in message


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_unconverged_solver_raises_when_asked(kind):
    model = tiny_model(kind, solver_on_failure="raise", **TIGHT)
    inputs = tiny_inputs(kind, model.config)
    for mode in (True, False):  # training forward and evaluation
        model.train(mode)
        with pytest.raises(DEQConvergenceError, match="did not reach rel residual 1e-12"):
            model(**inputs)
    assert DEQConvergenceError is hf_deq.deq.DEQConvergenceError and issubclass(
        DEQConvergenceError, RuntimeError
    )


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_unconverged_solver_is_silent_when_ignored(kind):
    model = tiny_model(kind, solver_on_failure="ignore", **TIGHT)
    inputs = tiny_inputs(kind, model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for mode in (True, False):
            model.train(mode)
            outputs = model(**inputs)
            assert bool((outputs.solver_residual > 1e-12).all())


def test_switching_on_failure_at_run_time():
    model = tiny_model("mdeq", solver_on_failure="ignore", **TIGHT).eval()
    inputs = tiny_inputs("mdeq", model.config)
    model.set_solver(model.config.solver, solver_on_failure="raise")
    with pytest.raises(DEQConvergenceError):
        model(**inputs)
    assert model.config.solver_on_failure == "raise"
    with pytest.raises(ValueError, match="solver_on_failure"):
        model.set_solver(model.config.solver, solver_on_failure="panic")


# -- presets at their defaults, on their own data: budget-limited solves are reported, not warned ------------------
def _train_and_predict(model, batches, eval_inputs, steps: int, lr: float) -> tuple[list, list]:
    """``steps`` AdamW steps, then an evaluation forward; returns (the DEQ warnings, every output)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    outputs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train()
        for step in range(steps):
            out = model(**batches(step))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            outputs.append(out)
        model.eval()
        with torch.no_grad():
            outputs.append(model(**eval_inputs))
    return _deq_warnings(caught), outputs


def _digits(rows: slice) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.tensor(digits.images[rows], dtype=torch.float32)[:, None] / 16.0
    return {"pixel_values": (pixels - 0.5) / 0.5, "labels": torch.tensor(digits.target[rows])}


def test_the_readme_preset_trains_and_predicts_on_digits_without_a_false_alarm():
    """``mdeq-tiny-digits`` (Broyden, 8 iterations in training, 16 in evaluation, tol 1e-3): its training solves
    end far above tol (relative residual ~0.1-0.4, by design of a phantom-gradient budget) but still improving;
    neither training, evaluation, nor ``solver_on_failure="raise"`` calls that a failure."""
    torch.manual_seed(0)
    model = hf_deq.create_model("mdeq-tiny-digits")
    assert model.config.solver_on_failure == "warn" and model.config.solver_tol == 1e-3
    train = _digits(slice(0, 1400))
    batches = lambda step: {k: v[32 * step : 32 * (step + 1)] for k, v in train.items()}  # noqa: E731
    found, outputs = _train_and_predict(model, batches, _digits(slice(1400, 1797)), steps=12, lr=2e-3)
    assert not found, [str(w.message) for w in found]
    assert float(outputs[0].solver_residual.min()) > 10 * model.config.solver_tol  # the main-branch alarm
    assert bool((outputs[-1].solver_residual > model.config.solver_tol).any())
    model.set_solver(model.config.solver, solver_on_failure="raise")
    model.train()
    model(**batches(0))  # budget-limited, still converging: not raised either


def _text_ids() -> torch.Tensor:
    path = Path(TINYSHAKESPEARE)
    if path.is_file():
        text = path.read_text()[:100_000]
    else:  # the built-in corpus where the shared data is absent
        from pydoc_data.topics import topics

        text = "\n".join(topics.values())[:100_000]
    return torch.tensor([min(ord(c), 127) for c in text])  # the preset's 128-token placeholder vocabulary


def test_the_char_lm_preset_trains_and_predicts_on_text_without_a_false_alarm():
    torch.manual_seed(0)
    model = hf_deq.create_model("deq-transformer-char")
    ids = _text_ids()
    generator = torch.Generator().manual_seed(0)

    def blocks(_step=None, n: int = 8, length: int = 64) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, len(ids) - length, (n,), generator=generator)
        block = torch.stack([ids[i : i + length] for i in starts])
        return {"input_ids": block, "labels": block}

    found, outputs = _train_and_predict(model, blocks, blocks(), steps=12, lr=1e-3)
    assert not found, [str(w.message) for w in found]
    assert all(math.isfinite(float(o.loss.detach())) for o in outputs)


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point"])
def test_diverging_map_keeps_the_best_finite_iterate(solver):
    """``f(z) = 1e20 * z + 1`` overflows to inf within a few iterations: the layer keeps a finite iterate and
    reports the failure instead of returning inf/NaN."""
    layer = hf_deq.deq.DEQFixedPoint(solver, "upg", max_iter=12, tol=1e-6, on_failure="ignore")
    z0 = torch.zeros(4, 8)
    with torch.no_grad():
        z, result = layer.eval()(lambda z: 1e20 * z + 1.0, z0)
    assert bool(torch.isfinite(z).all()) and not bool(result.converged.any())
    assert result.residual.shape == (4,) and bool(torch.isfinite(result.residual).all())


# -- the training scripts --------------------------------------------------------------------------------------
def _nan_from(call: int, counter: dict, original):
    """Wrap a loss function: every training call from the ``call``-th on returns NaN."""

    def wrapped(*args, **kwargs):
        loss = original(*args, **kwargs)
        counter["n"] += 1
        return loss * math.nan if counter["n"] >= call and torch.is_grad_enabled() else loss

    return wrapped


def _on_second_call(original, change):
    """Wrap a loss function: its second call, if it is a training call (grad enabled), returns ``change(loss)``."""
    counter = {"n": 0}

    def wrapped(*args, **kwargs):
        loss = original(*args, **kwargs)
        counter["n"] += 1
        return change(loss) if counter["n"] == 2 and torch.is_grad_enabled() else loss

    return wrapped


def test_mdeq_script_skips_and_counts_a_nonfinite_step(tmp_path, fresh_accelerate_state, monkeypatch):
    """The second training loss is NaN: that step is skipped (weights and BatchNorm statistics untouched),
    counted in the per-step log and in ``all_results.json``, and training goes on."""
    script = load_script("train_mdeq_classifier")
    cls = hf_deq.MDEQForImageClassification
    monkeypatch.setattr(
        cls, "_classification_loss", _on_second_call(cls._classification_loss, lambda x: x * math.nan)
    )
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    results = script.main(mdeq_args(out, "--log_file", str(log), "--max_nonfinite_steps", "2", steps=4))
    saved = hf_deq.training_utils.json.loads((out / "all_results.json").read_text())
    assert saved["skipped_nonfinite_steps"] == 1 == results["skipped_nonfinite_steps"]
    assert (
        saved["train_steps"] == 4 and math.isfinite(saved["train_loss"]) and math.isfinite(saved["eval_loss"])
    )
    records = [r for r in read_log(log) if "step" in r]
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 1, 1, 1]
    assert math.isnan(records[1]["loss"]) and all(math.isfinite(r["loss"]) for r in records if r["step"] != 2)
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert int(weights["mdeq.stem.norm1.num_batches_tracked"]) == 3  # the skipped forward was rolled back


def test_mdeq_script_stops_after_nonfinite_steps_in_a_row_keeping_the_last_checkpoint(
    tmp_path, fresh_accelerate_state, monkeypatch
):
    """Training losses are finite for steps 1-2, NaN from step 3 on: steps 3, 4, 5 are skipped (the MDEQ script
    counts a skipped batch as a step, so ``step_4`` is still written, with the unchanged weights of step 2), then
    the run stops with a clear message; the checkpoints hold finite weights and no final model is written."""
    script = load_script("train_mdeq_classifier")
    cls = hf_deq.MDEQForImageClassification
    monkeypatch.setattr(cls, "_classification_loss", _nan_from(3, {"n": 0}, cls._classification_loss))
    out = tmp_path / "run"
    log = tmp_path / "steps.jsonl"
    args = mdeq_args(out, "--checkpointing_steps", "2", "--max_nonfinite_steps", "3", "--log_file", str(log))
    with pytest.raises(RuntimeError, match=r"3 training steps in a row had a non-finite loss; stopping"):
        script.main(args + ["--max_train_steps", "8"])
    records = read_log(log)
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 0, 1, 2]  # step 5 raised before its line
    assert all(math.isfinite(r["loss"]) for r in records[:2]) and all(
        math.isnan(r["loss"]) for r in records[2:]
    )
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step_")) == ["step_2", "step_4"]
    a, b = load_file(out / "step_2" / "model.safetensors"), load_file(out / "step_4" / "model.safetensors")
    for key in a:
        assert torch.isfinite(a[key]).all(), key
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)  # skipped steps changed nothing


def test_mdeq_script_with_an_absurd_learning_rate_stops_cleanly(tmp_path, fresh_accelerate_state):
    """A real divergence, nothing patched: AdamW with lr=1e30 makes the weights overflow, every later loss is
    NaN; the run stops after 2 of them with the clear message; the step-1 checkpoint is complete."""
    script = load_script("train_mdeq_classifier")
    out = tmp_path / "run"
    log = tmp_path / "steps.jsonl"
    args = mdeq_args(
        out,
        *("--learning_rate", "1e30", "--lr_scheduler_type", "constant", "--checkpointing_steps", "1"),
        *("--max_nonfinite_steps", "2", "--log_file", str(log), "--max_train_steps", "6"),
    )
    with pytest.raises(RuntimeError, match="non-finite loss; stopping"):
        script.main(args)
    records = read_log(log)
    assert math.isfinite(records[0]["loss"]) and records[-1]["skipped_nonfinite_steps"] >= 1
    assert (out / "step_1" / "model.safetensors").is_file() and not list(out.glob("*.tmp"))
    for checkpoint in out.glob("step_*"):  # a skipped step must not leave NaN BatchNorm statistics behind
        for key, value in load_file(checkpoint / "model.safetensors").items():
            if "running_" in key:
                assert torch.isfinite(value).all(), (checkpoint.name, key)
    assert not (out / "all_results.json").exists()


def test_lm_script_skips_counts_and_stops_on_nonfinite_losses(tmp_path, fresh_accelerate_state, monkeypatch):
    """One NaN loss is skipped and counted (log and ``all_results.json``); a NaN that persists stops the run
    after ``--max_nonfinite_steps`` in a row without touching the last checkpoint."""
    from hf_deq.models.deq_transformer import modeling_deq_transformer as modeling

    script = load_script("train_deq_lm")
    text = small_text_file(tmp_path)
    original = modeling.causal_lm_loss
    monkeypatch.setattr(modeling, "causal_lm_loss", _on_second_call(original, lambda x: x * math.nan))
    out, log = tmp_path / "once", tmp_path / "once.jsonl"
    results = script.main(lm_args(out, text, "--log_file", str(log), steps=3))
    saved = hf_deq.training_utils.json.loads((out / "all_results.json").read_text())
    assert saved["skipped_nonfinite_steps"] == 1 == results["skipped_nonfinite_steps"]
    assert (
        saved["train_steps"] == 3 and math.isfinite(saved["train_loss"]) and math.isfinite(saved["eval_loss"])
    )
    records = [r for r in read_log(log) if "step" in r]
    assert [r["step"] for r in records] == [1, 2, 3]  # the skipped batch is not an optimizer step here
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 1, 1]

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    monkeypatch.setattr(modeling, "causal_lm_loss", _nan_from(3, {"n": 0}, original))
    out = tmp_path / "stop"
    args = lm_args(out, text, "--checkpointing_steps", "2", "--max_nonfinite_steps", "3", steps=6)
    with pytest.raises(RuntimeError, match="3 training steps in a row had a non-finite loss"):
        script.main(args)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step_")) == ["step_2"]
    weights = load_file(out / "step_2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "model.safetensors").exists() and not list(out.glob("*.tmp"))


# -- finite loss, non-finite gradient ---------------------------------------------------------------------------
class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward: what a diverging backward solve looks like."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def test_step_guard_refuses_non_finite_gradients_and_counts_runs_of_bad_steps():
    guard = hf_deq.training_utils.NonFiniteStepGuard(max_in_a_row=4)
    weight = torch.nn.Parameter(torch.ones(3))
    for bad in (False, True, False, True, True):
        weight.grad = torch.full((3,), math.nan if bad else 1.0)
        assert guard.check_loss(torch.tensor(1.0))  # the loss is finite every time
        assert guard.check_gradients([weight]) is not bad
    assert (guard.skipped, guard.skipped_for_gradients, guard.in_a_row) == (3, 3, 2)
    assert not guard.check_loss(torch.tensor(math.inf))  # a bad loss continues the run of bad steps ...
    assert guard.in_a_row == 3 and guard.skipped == 4
    weight.grad = torch.tensor([1.0, math.inf, 1.0])
    with pytest.raises(RuntimeError, match="4 training steps in a row had a non-finite gradient; stopping"):
        guard.check_gradients([weight])
    weight.grad = None
    assert hf_deq.training_utils.gradients_are_finite([weight])  # parameters without a gradient are fine
    scaled = hf_deq.training_utils.NonFiniteStepGuard(inspect_gradients=False)  # fp16: the scaler decides
    weight.grad = torch.full((3,), math.nan)
    assert scaled.check_gradients([weight]) and scaled.skipped == 0


def test_mdeq_script_skips_a_step_whose_gradient_is_not_finite(tmp_path, fresh_accelerate_state, monkeypatch):
    """The second step's loss is finite but its gradient is NaN: the weights and BatchNorm statistics stay as
    they were, the step is counted, and the run goes on with finite weights."""
    script = load_script("train_mdeq_classifier")
    cls = hf_deq.MDEQForImageClassification
    monkeypatch.setattr(
        cls, "_classification_loss", _on_second_call(cls._classification_loss, _NaNGradient.apply)
    )
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    results = script.main(mdeq_args(out, "--log_file", str(log), "--max_nonfinite_steps", "2", steps=4))
    assert results["skipped_nonfinite_steps"] == 1 and results["train_steps"] == 4
    records = [r for r in read_log(log) if "step" in r]
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 1, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in records)  # the loss itself was finite throughout
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert int(weights["mdeq.stem.norm1.num_batches_tracked"]) == 3  # the skipped forward was rolled back


def test_lm_script_skips_a_step_whose_gradient_is_not_finite(tmp_path, fresh_accelerate_state, monkeypatch):
    from hf_deq.models.deq_transformer import modeling_deq_transformer as modeling

    script = load_script("train_deq_lm")
    text = small_text_file(tmp_path)
    monkeypatch.setattr(
        modeling, "causal_lm_loss", _on_second_call(modeling.causal_lm_loss, _NaNGradient.apply)
    )
    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    results = script.main(lm_args(out, text, "--log_file", str(log), steps=3))
    assert results["skipped_nonfinite_steps"] == 1 and results["train_steps"] == 3
    assert [r["skipped_nonfinite_steps"] for r in read_log(log) if "step" in r] == [0, 1, 1]
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())
