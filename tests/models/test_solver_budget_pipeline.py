"""The solver budget keywords through ``pipeline("image-classification", ...)``: per call, per pipeline, on a batch
of images and on a saved model, with the config untouched; other models keep transformers' own pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_solver_budget import budget_state, slow_model
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_classification import ImageClassificationPipeline

from hf_deq import MDEQImageProcessor
from hf_deq.modeling_deq import SolverBudgetError
from hf_deq.pipelines import DEQImageClassificationPipeline, register_pipelines


def random_image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (9, 9, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def watched(model) -> list[int]:
    """The solver steps of each forward of ``model``, appended as they run."""
    steps: list[int] = []
    model.register_forward_hook(lambda module, args, out: steps.append(int(out.solver_nstep.max())))
    return steps


@pytest.fixture
def classifier():
    model = slow_model("mdeq").eval()  # solver_max_iter 12, tol 1e-9: a solve needs more than 2 steps
    steps = watched(model)
    pipe = pipeline(
        "image-classification",
        model=model,
        image_processor=MDEQImageProcessor.from_model_config(model.config),
    )
    return pipe, steps


def test_a_call_takes_the_budget_for_that_call_only(classifier):
    pipe, steps = classifier
    assert type(pipe) is DEQImageClassificationPipeline
    before = budget_state(pipe.model)
    image = random_image()
    small = pipe(image, solver_eval_max_iter=1, top_k=3)
    default = pipe(image, top_k=3)
    assert steps[0] == 1 < steps[1]
    assert budget_state(pipe.model) == before
    with torch.no_grad():
        logits = pipe.model(
            **pipe.image_processor(image, return_tensors="pt"), solver_eval_max_iter=1
        ).logits[0]
    assert small[0]["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-6)
    assert small != default
    steps.clear()
    pipe(image)
    pipe(image, solver_tol=0.9)  # a loose tolerance stops early
    pipe(image, solver_max_iter=3)  # eval budget unset: the training budget applies
    assert steps[1] < steps[0] and steps[2] == 3


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_list_of_images_runs_every_batch_with_the_budget(classifier, batch_size):
    pipe, steps = classifier
    images = [random_image(seed) for seed in range(3)]
    before = budget_state(pipe.model)
    results = pipe(images, solver_eval_max_iter=2, batch_size=batch_size)
    assert len(results) == 3 and len(steps) == -(-3 // batch_size) and max(steps) <= 2
    steps.clear()
    pipe(images, batch_size=batch_size)
    assert min(steps) > 2
    assert budget_state(pipe.model) == before


def test_a_budget_given_to_the_pipeline_applies_to_every_call(classifier):
    pipe, steps = classifier
    pipe = pipeline(
        "image-classification", model=pipe.model, image_processor=pipe.image_processor, solver_eval_max_iter=2
    )
    pipe(random_image())
    pipe(random_image(), solver_eval_max_iter=4)  # the call's value wins
    assert steps[0] <= 2 < steps[1] <= 4
    assert pipe.model.config.solver_eval_max_iter is None


def test_a_bad_budget_names_the_keyword_before_any_solve(classifier):
    pipe, steps = classifier
    before = budget_state(pipe.model)
    with pytest.raises(
        SolverBudgetError, match=r"^solver_eval_max_iter=0 is invalid .*expected None or an integer in"
    ):
        pipe([random_image()], solver_eval_max_iter=0)
    with pytest.raises(SolverBudgetError, match=r"^solver_tol=-1\.0"):
        pipe(random_image(), solver_tol=-1.0)
    assert steps == [] and budget_state(pipe.model) == before


def test_a_saved_model_takes_the_budget_and_saving_the_pipeline_adds_no_custom_code(tmp_path):
    model = slow_model("mdeq")
    model.save_pretrained(tmp_path / "model")
    MDEQImageProcessor.from_model_config(model.config).save_pretrained(tmp_path / "model")
    pipe = pipeline("image-classification", model=str(tmp_path / "model"), device="cpu")
    assert type(pipe) is DEQImageClassificationPipeline
    steps = watched(pipe.model)
    pipe(random_image(), solver_eval_max_iter=1)
    pipe(random_image())
    assert steps[0] == 1 < steps[1]
    pipe.save_pretrained(tmp_path / "pipe")
    saved = json.loads((tmp_path / "pipe" / "config.json").read_text())
    assert "custom_pipelines" not in saved and saved["solver_eval_max_iter"] is None
    assert sorted(p.name for p in (tmp_path / "pipe").glob("*.py")) == []


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    config = ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    return ViTForImageClassification(config).eval(), ViTImageProcessorPil(size={"height": 8, "width": 8})


def test_other_models_get_transformers_pipeline_and_its_error():
    model, processor = tiny_vit()
    pipe = pipeline("image-classification", model=model, image_processor=processor)
    stock = pipeline(
        "image-classification",
        model=model,
        image_processor=processor,
        pipeline_class=ImageClassificationPipeline,
    )
    assert type(pipe) is ImageClassificationPipeline
    assert pipe(random_image()) == stock(random_image())
    errors = []
    for candidate in (pipe, stock):
        with pytest.raises(TypeError, match="unexpected keyword argument 'solver_eval_max_iter'") as err:
            candidate(random_image(), solver_eval_max_iter=1)
        errors.append(str(err.value))
    assert errors[0] == errors[1]


def test_registration_is_idempotent_and_leaves_a_foreign_class_alone(monkeypatch):
    entry = PIPELINE_REGISTRY.supported_tasks["image-classification"]
    assert entry["impl"] is DEQImageClassificationPipeline
    register_pipelines()
    assert PIPELINE_REGISTRY.supported_tasks["image-classification"] == entry

    class Theirs(ImageClassificationPipeline):
        pass

    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, "image-classification", {**entry, "impl": Theirs})
    register_pipelines()
    assert PIPELINE_REGISTRY.supported_tasks["image-classification"]["impl"] is Theirs
    stock = {**entry, "impl": "transformers.pipelines.image_classification.ImageClassificationPipeline"}
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, "image-classification", stock)
    register_pipelines()
    assert PIPELINE_REGISTRY.supported_tasks["image-classification"] == entry
