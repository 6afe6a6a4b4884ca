"""The solver budget as a per-call knob: ``model(..., solver_eval_max_iter=...)``, ``generate(...)`` and the
pipelines, for both families; the config is never touched and the next call runs with its budget again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import tiny_inputs, tiny_model
from transformers import pipeline

from hf_deq import DEQConfigError
from hf_deq.data.tokenizers import train_char_tokenizer
from hf_deq.modeling_deq import SOLVER_BUDGET_KEYWORDS, SolverBudgetError

KINDS = ("mdeq", "lm")


def slow_model(kind: str, **overrides):
    """A model whose solve needs its whole budget (larger weights, a tight tolerance)."""
    fields = {"solver_tol": 1e-9, "solver_max_iter": 12, **overrides}
    if kind == "lm":
        fields.setdefault("initializer_range", 0.15)
    return tiny_model(kind, **fields)


def eval_inputs(kind: str, model) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(kind, model.config)
    inputs.pop("labels")
    return inputs


def budget_state(model) -> tuple:
    return (
        model.config.to_dict(),
        [(layer.max_iter, layer.eval_max_iter, layer.tol) for layer in model.deq_layers()],
    )


@pytest.mark.parametrize("kind", KINDS)
def test_forward_budget_applies_to_that_call_only(kind):
    model = slow_model(kind, solver_eval_max_iter=10).eval()
    inputs = eval_inputs(kind, model)
    before = budget_state(model)
    with torch.no_grad():
        default = model(**inputs).solver_nstep
        small = model(**inputs, solver_eval_max_iter=3).solver_nstep
        after = model(**inputs).solver_nstep
        loose = model(**inputs, solver_tol=0.9).solver_nstep
    assert int(default.max()) == 10 and int(small.max()) <= 3
    torch.testing.assert_close(after, default)
    assert int(loose.max()) < 10  # a loose tolerance stops early
    assert budget_state(model) == before


@pytest.mark.parametrize("kind", KINDS)
def test_training_forward_takes_solver_max_iter(kind):
    model = slow_model(kind).train()
    inputs = tiny_inputs(kind, model.config)
    out = model(**inputs, solver_max_iter=2)
    out.loss.backward()  # the estimator's gradient still attaches
    assert int(out.solver_nstep.max()) <= 2
    assert int(model(**inputs).solver_nstep.max()) == 12
    assert model.config.solver_max_iter == 12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("solver_eval_max_iter", 0, "an integer in"),
        ("solver_max_iter", 2.5, "an integer"),
        ("solver_tol", float("nan"), "a finite number"),
        ("solver_tol", -1.0, "a finite number"),
        ("solver_eval_max_iter", "4", "an integer"),
        ("solver_eval_max_iter", True, "an integer"),
    ],
)
def test_a_bad_budget_names_the_keyword_and_changes_nothing(kind, keyword, value, expected):
    model = slow_model(kind).eval()
    with torch.no_grad():
        model(**eval_inputs(kind, model), **{keyword: 1})  # a valid value, checked just before
    before = budget_state(model)
    with pytest.raises(
        SolverBudgetError, match=rf"^{keyword}=.*this call's solver budget: expected .*{expected}"
    ):
        model(**eval_inputs(kind, model), **{keyword: value})
    assert isinstance(SolverBudgetError(keyword, value, ""), DEQConfigError)
    assert budget_state(model) == before


def test_the_keywords_are_in_the_forward_signature():
    import inspect

    for kind in KINDS:
        params = inspect.signature(tiny_model(kind).forward).parameters
        assert set(SOLVER_BUDGET_KEYWORDS) <= set(params)


def test_a_config_edit_inside_the_block_wins_after_it():
    model = slow_model("mdeq").eval()
    inputs = eval_inputs("mdeq", model)
    with torch.no_grad(), model.solver_budget(solver_eval_max_iter=2):
        assert int(model(**inputs).solver_nstep.max()) <= 2
        model.config.solver_max_iter = 5  # applied by the next forward, which drops the override
        model(**inputs)
    with torch.no_grad():
        assert int(model(**inputs).solver_nstep.max()) == 5
    assert [layer.max_iter for layer in model.deq_layers()] == [5]


def test_an_error_inside_the_block_restores_the_budget():
    model = slow_model("mdeq").eval()
    before = budget_state(model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.solver_budget(solver_eval_max_iter=2, solver_tol=0.5),
    ):
        raise RuntimeError("boom")
    assert budget_state(model) == before


@pytest.fixture
def char_lm():
    tokenizer = train_char_tokenizer(["hello world, the quick brown fox"])
    model = slow_model("lm", vocab_size=len(tokenizer)).eval()
    steps: list[int] = []
    model.register_forward_hook(lambda module, args, out: steps.append(int(out.solver_nstep.max())))
    return model, tokenizer, steps


def test_generate_takes_the_budget_for_every_forward(char_lm):
    model, tokenizer, steps = char_lm
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    before = budget_state(model)
    model.generate(ids, max_new_tokens=3, do_sample=False, solver_eval_max_iter=2)
    assert len(steps) == 3 and max(steps) <= 2
    steps.clear()
    model.generate(ids, max_new_tokens=3, do_sample=False)
    assert max(steps) > 3
    assert budget_state(model) == before
    with pytest.raises(SolverBudgetError, match="^solver_tol=-1"):
        model.generate(ids, max_new_tokens=2, solver_tol=-1)


def test_text_generation_pipeline_passes_the_budget(char_lm):
    model, tokenizer, steps = char_lm
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    generator("hello", max_new_tokens=3, do_sample=False, solver_eval_max_iter=3)
    assert len(steps) == 3 and max(steps) <= 3
    steps.clear()
    generator("hello", max_new_tokens=3, do_sample=False)
    assert max(steps) > 3


def test_image_classification_pipeline_runs_inside_solver_budget():
    """``model.solver_budget`` around a pipeline call also works (the keywords themselves:
    ``test_solver_budget_pipeline.py``)."""
    from hf_deq import MDEQImageProcessor

    model = slow_model("mdeq").eval()
    steps: list[int] = []
    model.register_forward_hook(lambda module, args, out: steps.append(int(out.solver_nstep.max())))
    classifier = pipeline(
        "image-classification",
        model=model,
        image_processor=MDEQImageProcessor.from_model_config(model.config),
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 9, 3), dtype=np.uint8), mode="RGB")
    with model.solver_budget(solver_eval_max_iter=3):
        classifier(image)
    classifier(image)
    assert steps[0] <= 3 < steps[1]
    assert model.config.solver_eval_max_iter is None
