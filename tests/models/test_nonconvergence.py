"""Non-convergence and divergence.

Model level: a solver that misses ``solver_tol`` is reported per sample (``solver_residual > tol``) and, by
``solver_on_failure``, warned about once per model over many forwards, raised as ``DEQConvergenceError``, or
ignored. A diverging map keeps the best finite iterate. (The training loop's guard against non-finite steps is
tested in tests/training/test_nonfinite_guard.py.)"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from tiny_runs import (
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


@pytest.mark.parametrize(
    ("kind", "contracts"),
    [("lm", True), ("mdeq", False)],  # measured at init: rho ~0.5 and ~1.6-2.3
)
def test_a_failed_solve_names_the_measured_spectral_radius_and_what_it_suggests(kind, contracts):
    """Three solver steps to 1e-12 fail. The tiny LM contracts at its best iterate: the message names the
    training or evaluation budget; the tiny MDEQ does not: it names Jacobian regularisation (issue 18 item 3)."""
    budget = {"solver_max_iter": 3, "solver_eval_max_iter": 3, "solver_tol": 1e-12}
    model = tiny_model(kind, solver_on_failure="raise", **budget)
    inputs = tiny_inputs(kind, model.config)
    for training, field in ((True, "solver_max_iter"), (False, "solver_eval_max_iter")):
        model.train(training)
        with torch.set_grad_enabled(training), pytest.raises(DEQConvergenceError) as err:
            model(**inputs)
        message = str(err.value)
        rho = float(message.split("best iterate ~")[1].split(" ")[0])
        if contracts:
            assert 0 < rho < 1 and "(< 1)" in message and f"(config {field})" in message, message
        else:
            assert rho >= 1 and "(>= 1)" in message and "jacobian_reg_weight" in message, message
