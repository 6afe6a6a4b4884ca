#!/usr/bin/env python
"""Fine-tune an MDEQ image classifier with the ``transformers`` ``Trainer`` (the shape of transformers'
``run_image_classification.py``): ``TrainingArguments`` flags as usual, plus the model's solver and gradient
estimator, which can differ from the ones it was trained with.

    # a saved model, fine-tuned with the exact gradient and a larger solver budget
    python scripts/finetune_with_trainer.py --model_name_or_path outputs/mdeq-tiny-digits \\
        --grad_estimator implicit --solver_max_iter 12 --output_dir outputs/mdeq-finetuned \\
        --num_train_epochs 2 --learning_rate 5e-4 --eval_strategy epoch --report_to none

    # from a preset, on a Hub dataset, several GPUs (Trainer uses Accelerate underneath)
    accelerate launch scripts/finetune_with_trainer.py --preset mdeq-tiny-cifar10 \\
        --dataset_name uoft-cs/cifar10 --output_dir outputs/mdeq-cifar --bf16 --eval_strategy epoch

The data are loaded and split exactly as ``train_mdeq_classifier.py`` does (default: scikit-learn's digits, no
download). Evaluation reports ``accuracy`` (an ``evaluate`` metric) and the DEQ solver statistics
(``solver_nstep``, ``solver_residual``), which ``Trainer`` collects from the model outputs. The model and its
image processor are saved to ``--output_dir``; ``--push_to_hub`` (with ``--hub_model_id``, ``--hub_private_repo``,
``--hub_token``) publishes the final model at the end with hf_deq's model card and the remote code that lets
people without hf_deq load it (``hf_deq.hub.push_model_dir``), instead of ``Trainer``'s own upload.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

import hf_deq
from hf_deq.data import images
from hf_deq.hub import check_hub_args, missing_local_model_dir, push_from_args
from hf_deq.hub.errors import InvalidRepoIdError
from hf_deq.tasks import get_task
from hf_deq.training import (
    DEQArguments,
    FlagError,
    FlagParser,
    deq_overrides,
    holds_a_model,
    load_packaged_metric,
)
from hf_deq.training.arguments import check_model_config
from hf_deq.training.flags import flag
from hf_deq.training.script import error_lines


@dataclass
class ModelArguments:
    """Where the model comes from (its DEQ flags: ``hf_deq.training.DEQArguments``, shared with the training
    scripts)."""

    model_name_or_path: str | None = flag(
        None, "a saved hf_deq MDEQ (folder or Hub id); without it, a new --preset"
    )
    preset: str = flag("mdeq-tiny-digits", "the preset of a new model")


@dataclass
class DataArguments:
    """The data: ``train_mdeq_classifier.py``'s."""

    dataset_name: str = flag("digits", "'digits' (built in) or an HF image dataset id, e.g. uoft-cs/cifar10")
    dataset_config_name: str | None = flag(None, "the dataset's configuration")
    max_train_samples: int | None = flag(None, "truncate the training set")
    max_eval_samples: int | None = flag(None, "truncate the evaluation set")


def load_data(data_args: DataArguments, seed: int):
    """``train_mdeq_classifier.py``'s datasets: ``(DatasetDict(train, validation), image column, label column,
    label names)``."""
    return images.load_image_datasets(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        seed=seed,
    )


def build_model(model_args: ModelArguments, deq_args: DEQArguments, label_names: list[str]):
    """The MDEQ classifier of ``model_args`` with the DEQ fields ``deq_args`` set, for ``label_names``, and its
    image processor."""
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    overrides = deq_overrides(deq_args)
    if model_args.model_name_or_path is None:
        model = hf_deq.create_model(model_args.preset, **overrides, **labels)
        return model, hf_deq.MDEQImageProcessor.from_model_config(model.config)
    # A head for other labels is created anew (ignore_mismatched_sizes); the DEQ body is kept.
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, **overrides, **labels, ignore_mismatched_sizes=True
    )
    processor = hf_deq.MDEQImageProcessor.for_saved_model(model_args.model_name_or_path, model.config)
    return model, processor


def make_compute_metrics():
    """Accuracy plus the mean solver steps and residual. With labels, ``Trainer`` keeps every model output
    but the loss as predictions: ``(logits, solver_nstep, solver_residual)`` for an MDEQ classifier in eval."""
    accuracy = load_packaged_metric("accuracy")

    def compute_metrics(prediction) -> dict[str, float]:
        outputs = prediction.predictions
        logits, nstep, residual = outputs if isinstance(outputs, tuple) else (outputs, None, None)
        metrics = accuracy.compute(predictions=np.argmax(logits, axis=-1), references=prediction.label_ids)
        if nstep is not None:
            metrics["solver_nstep"] = float(np.mean(nstep))
            finite = residual[np.isfinite(residual)]
            metrics["solver_residual"] = float(finite.mean()) if finite.size else float("inf")
        return metrics

    return compute_metrics


def check_model_args(model_args: ModelArguments, deq_args: DEQArguments) -> None:
    """Every model flag checked before any data (a misspelled solver or estimator already got argparse's "did you
    mean"): a preset or saved model of another family (this script fine-tunes MDEQ image classifiers) is
    refused, and the config with every override is built once, so that a bad value raises ``FlagError`` naming
    its flag."""
    if model_args.model_name_or_path is not None and (
        problem := missing_local_model_dir(model_args.model_name_or_path)
    ):
        raise FlagError("model_name_or_path", model_args.model_name_or_path, problem)
    model = SimpleNamespace(**vars(deq_args), **vars(model_args), config_overrides=None)
    check_model_config(model, get_task("image-classification"))


def build_parser() -> FlagParser:
    """The script's flags: the model, its DEQ fields, the data and transformers' ``TrainingArguments``."""
    return FlagParser(
        (ModelArguments, DEQArguments, DataArguments, TrainingArguments), usage="%(prog)s [-h] [options]"
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = build_parser()
    model_args, deq_args, data_args, training_args = parser.parse_into_dataclasses(argv)
    if holds_a_model(training_args.output_dir) and training_args.resume_from_checkpoint is None:
        parser.error(
            f"argument --output_dir: {training_args.output_dir} already holds a model; choose another folder "
            "(nothing was overwritten)"
        )
    hub_args = SimpleNamespace(
        push_to_hub=training_args.push_to_hub,
        hub_model_id=training_args.hub_model_id,
        output_dir=training_args.output_dir,
        hub_private_repo=bool(training_args.hub_private_repo),
        hub_strategy="end",
        hub_token=training_args.hub_token,
    )
    with parser.refusing(InvalidRepoIdError, prefix="argument --hub_model_id: "):
        check_model_args(
            model_args, deq_args
        )  # a bad value is one error line naming its flag, before any data
        check_hub_args(hub_args)  # a malformed --hub_model_id stops here, before training
    training_args.push_to_hub = False  # published below by hf_deq (model card + remote code), not by Trainer
    with error_lines(parser.prog, training_args.output_dir):
        return fine_tune(model_args, deq_args, data_args, training_args, hub_args)


def fine_tune(
    model_args: ModelArguments,
    deq_args: DEQArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    hub_args: SimpleNamespace,
) -> dict[str, float]:
    """Load the data and the model, train with ``Trainer``, evaluate, save and (``--push_to_hub``) publish."""
    data, image_column, label_column, label_names = load_data(data_args, training_args.seed)
    model, processor = build_model(model_args, deq_args, label_names)

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        return {
            "pixel_values": processor(batch[image_column], return_tensors="pt")["pixel_values"],
            "labels": batch[label_column],
        }

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float(),
            "labels": torch.tensor([int(e["labels"]) for e in examples]),
        }

    training_args.remove_unused_columns = False  # the transform needs the image column
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"].with_transform(transform),
        eval_dataset=data["validation"].with_transform(transform),
        data_collator=collate,
        processing_class=processor,
        compute_metrics=make_compute_metrics(),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if hub_args.push_to_hub and trainer.is_world_process_zero():
        recipe = {**asdict(model_args), **asdict(deq_args), **asdict(data_args), **training_args.to_dict()}
        push_from_args(SimpleNamespace(**{**recipe, **vars(hub_args)}), training_args.output_dir)
    return metrics


if __name__ == "__main__":
    main()
