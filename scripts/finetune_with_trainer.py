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

import argparse
import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

import hf_deq
from hf_deq.data.images import load_image_datasets
from hf_deq.hub import check_hub_args, missing_local_model_dir, push_from_args
from hf_deq.tasks import get_task
from hf_deq.training import holds_a_model, load_packaged_metric
from hf_deq.training.arguments import DEQ_ARGUMENT_NAMES, DEQ_FIELD_CHOICES, check_model_config
from hf_deq.training.script import error_lines


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a saved hf_deq MDEQ (folder or Hub id); without it, a new --preset"}
    )
    preset: str = field(default="mdeq-tiny-digits", metadata={"help": "the preset of a new model"})
    solver: str | None = field(default=None, metadata={"help": "forward solver (default: the model's)"})
    solver_max_iter: int | None = field(default=None, metadata={"help": "forward budget in training"})
    solver_eval_max_iter: int | None = field(default=None, metadata={"help": "forward budget in evaluation"})
    solver_on_failure: str | None = field(
        default=None, metadata={"help": "warn, raise or ignore when the solver misses its tolerance"}
    )
    grad_estimator: str | None = field(
        default=None, metadata={"help": "implicit, upg, npg, one_step or unrolled (default: the model's)"}
    )
    grad_steps: int | None = field(default=None, metadata={"help": "k of UPG/NPG"})
    grad_damping: float | None = field(default=None, metadata={"help": "lambda of UPG/NPG"})
    grad_max_iter: int | None = field(default=None, metadata={"help": "backward budget of implicit"})

    def deq_overrides(self) -> dict[str, Any]:
        names = ("solver", "solver_max_iter", "solver_eval_max_iter", "solver_on_failure", "grad_estimator")
        names += ("grad_steps",)
        names += ("grad_damping", "grad_max_iter")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="digits",
        metadata={"help": "'digits' (built in) or an HF image dataset id, e.g. uoft-cs/cifar10"},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "the dataset's configuration"})
    max_train_samples: int | None = field(default=None, metadata={"help": "truncate the training set"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "truncate the evaluation set"})


def load_data(data_args: DataArguments, seed: int):
    """``train_mdeq_classifier.py``'s datasets: ``(DatasetDict(train, validation), image column, label column,
    label names)``."""
    return load_image_datasets(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        seed=seed,
    )


def build_model(model_args: ModelArguments, label_names: list[str]):
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    overrides = model_args.deq_overrides()
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


def check_model_args(parser: argparse.ArgumentParser, model_args: ModelArguments) -> None:
    """Every model flag checked before any data: a misspelled solver or estimator gets a "did you mean", a
    preset or saved model of another family (this script fine-tunes MDEQ image classifiers) is refused, and
    the config with every override is built once, so that a bad value names its flag."""
    overrides = model_args.deq_overrides()
    for name, value in overrides.items():
        choices = DEQ_FIELD_CHOICES[name]() if name in DEQ_FIELD_CHOICES else None
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            parser.error(f"argument --{name}: invalid choice {value!r}; {hint}(choose from {choices})")
    if model_args.model_name_or_path is not None and (
        problem := missing_local_model_dir(model_args.model_name_or_path)
    ):
        parser.error(f"argument --model_name_or_path: {problem}")
    flags = {name: overrides.get(name) for name in DEQ_ARGUMENT_NAMES}
    namespace = argparse.Namespace(
        **flags,
        model_name_or_path=model_args.model_name_or_path,
        preset=model_args.preset,
        config_overrides=None,
    )
    check_model_config(parser, namespace, get_task("image-classification"))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments), usage="%(prog)s [-h] [options]"
    )
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if holds_a_model(training_args.output_dir) and training_args.resume_from_checkpoint is None:
        parser.error(
            f"argument --output_dir: {training_args.output_dir} already holds a model; choose another folder "
            "(nothing was overwritten)"
        )
    check_model_args(parser, model_args)  # a bad value is one error line naming its flag, before any data
    push = training_args.push_to_hub
    hub_args = argparse.Namespace(
        push_to_hub=push,
        hub_model_id=training_args.hub_model_id,
        output_dir=training_args.output_dir,
        hub_private_repo=bool(training_args.hub_private_repo),
        hub_token=training_args.hub_token,
    )
    try:
        check_hub_args(hub_args)  # a malformed --hub_model_id stops here, before training
    except SystemExit as err:
        parser.error(f"argument {err}")
    training_args.push_to_hub = False  # published below by hf_deq (model card + remote code), not by Trainer
    with error_lines(parser.prog, training_args.output_dir):
        return fine_tune(model_args, data_args, training_args, hub_args)


def fine_tune(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    hub_args: argparse.Namespace,
) -> dict[str, float]:
    """Load the data and the model, train with ``Trainer``, evaluate, save and (``--push_to_hub``) publish."""
    data, image_column, label_column, label_names = load_data(data_args, training_args.seed)
    model, processor = build_model(model_args, label_names)

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
        recipe = {**asdict(model_args), **asdict(data_args), **training_args.to_dict()}
        push_from_args(argparse.Namespace(**{**recipe, **vars(hub_args)}), training_args.output_dir)
    return metrics


if __name__ == "__main__":
    main()
