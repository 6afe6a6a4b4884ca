"""Image classification with an MDEQ: digits (default, nothing downloaded), HF image datasets or image folders;
accuracy; random crop / flip augmentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.errors import InputError
from ..data.images import (
    AUGMENTATIONS,
    DIGITS_SPLIT_SEED,
    augment_batch,
    check_image_folder,
    collate_images,
    image_dataset_name,
    load_image_datasets,
    with_image_transform,
)
from ..training.arguments import config_overrides
from ..training.errors import FlagError
from ..training.evaluation import load_packaged_metric
from ..training.flag_ranges import SEED_RANGE
from ..training.flags import flag
from ..training.task import TaskData, TrainingTask, register_task

if TYPE_CHECKING:
    from ..training.arguments import TrainingArgs


@dataclasses.dataclass
class RawImageData:
    """The images of the data flags, before any processing.

    Args:
        datasets: a ``DatasetDict`` with ``train`` and ``validation``.
        image_column / label_column: the column names of the images and of their labels.
        label_names: the class names, in label order.
    """

    datasets: Any
    image_column: str
    label_column: str
    label_names: list[str]


def load_images(args: TrainingArgs) -> RawImageData:
    """The ``RawImageData`` of the data flags."""
    datasets, image_column, label_column, label_names = load_image_datasets(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        image_column_name=args.image_column_name,
        label_column_name=args.label_column_name,
        train_val_split=args.train_val_split,
        split_seed=args.split_seed,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        seed=args.seed,
    )
    return RawImageData(datasets, image_column, label_column, list(label_names))


def build_classifier(args: TrainingArgs, label_names: list[str]):
    """The MDEQ classifier (from ``--preset`` or ``--model_name_or_path``, every config override applied, the
    dataset's labels) and its image processor."""
    from transformers import AutoModelForImageClassification

    from ..models.mdeq import MDEQImageProcessor
    from ..variants import create_config, get_variant

    labels = {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}
    overrides = config_overrides(args)
    if args.model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, **overrides, **labels, ignore_mismatched_sizes=True
        )
        return model, MDEQImageProcessor.for_saved_model(args.model_name_or_path, model.config)
    config = create_config(args.preset, **{**overrides, **labels})
    return get_variant(args.preset).model_class(config), MDEQImageProcessor.from_model_config(config)


@dataclasses.dataclass
class ImageDataArguments:
    """The image data flags of ``scripts/train_mdeq_classifier.py``."""

    _argument_group_name = "image data"

    train_dir: str | None = flag(None, "local image folder (imagefolder layout) to train on")
    validation_dir: str | None = flag(None, "local image folder to evaluate on")
    image_column_name: str | None = flag(None, "default: the first Image feature")
    label_column_name: str | None = flag(None, "default: the first ClassLabel feature")
    train_val_split: float = flag(0.2, "evaluation fraction split off train when needed")
    split_seed: int = flag(DIGITS_SPLIT_SEED, "seed of that split", range=SEED_RANGE)
    augment: str = flag(
        "none",
        "training augmentation: random crop after padding by image_size/8 (and horizontal flip)",
        choices=list(AUGMENTATIONS),
    )


@register_task
class ImageClassificationTask(TrainingTask):
    """The ``image-classification`` task of ``scripts/train_mdeq_classifier.py``: an MDEQ classifier on images
    (scikit-learn's digits, a Hub dataset or an image folder), evaluated by accuracy."""

    name = "image-classification"
    model_type = "mdeq"
    project_name = "mdeq_classifier"
    metric_name = "accuracy"
    default_preset = "mdeq-tiny-digits"
    dataset_help = (
        "'digits' (default when no --train_dir: scikit-learn's 8x8 digits, no download) or an HF dataset id "
        "loaded with datasets.load_dataset, e.g. uoft-cs/cifar10"
    )
    defaults = {
        "learning_rate": 2e-3,
        "weight_decay": 1e-4,
        "num_train_epochs": 8,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
    }
    data_source_flags = ("train_dir", "validation_dir")
    evaluation_data_flags = ("image_column_name", "label_column_name", "train_val_split", "split_seed")
    #: the accuracy metric (loaded by ``load_data``)
    metric: Any = None

    arguments = ImageDataArguments

    def check_args(self, args: Any) -> dict[str, Any]:
        """The data flags of ``args``: the split share, the image folders (``FlagError`` / ``InputError``);
        resolves ``dataset_name`` to ``digits`` when no data is named."""
        if not 0 < args.train_val_split < 1:
            raise FlagError(
                "train_val_split", args.train_val_split, f"must be in (0, 1), got {args.train_val_split}"
            )
        for flag_name, folder, min_classes in (
            ("train_dir", args.train_dir, 2),  # the least number of label folders
            ("validation_dir", args.validation_dir, 1),
        ):
            if folder is not None:
                check_image_folder(folder, flag_name, min_classes)
        if args.dataset_name is None and args.train_dir is None:
            return {"dataset_name": "digits"}
        return {}

    def load_raw(self, args: TrainingArgs) -> RawImageData:
        return load_images(args)

    def build_model(self, args: TrainingArgs, raw: RawImageData, checkpoint: Path | None):
        return build_classifier(args, raw.label_names)

    def load_pretrained(self, args: TrainingArgs, raw: RawImageData):
        from transformers import AutoModelForImageClassification

        from ..models.mdeq import MDEQImageProcessor

        label_names = raw.label_names
        model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path)
        if model.config.num_labels != len(label_names):
            raise InputError(
                "model_name_or_path",
                args.model_name_or_path,
                f"the model has {model.config.num_labels} labels but the dataset {len(label_names)} "
                f"({label_names[:10]}...): evaluate on the data the model was trained for",
            )
        return model, MDEQImageProcessor.for_saved_model(args.model_name_or_path, model.config)

    def load_data(self, args: TrainingArgs, raw: RawImageData, processing_class: Any) -> TaskData:
        self.metric = load_packaged_metric("accuracy")

        def split(name: str):
            return with_image_transform(
                raw.datasets[name], processing_class, raw.image_column, raw.label_column
            )

        return TaskData(
            train=split("train"),
            validation=split("validation"),
            collate_fn=collate_images,
            dataset_name=image_dataset_name(args.dataset_name, args.train_dir),
            dataset_config_name=args.dataset_config_name,
            info={"label_names": raw.label_names},
        )

    def prepare_train_batch(self, batch: dict, args: TrainingArgs) -> dict:
        """``--augment``, drawn here (not in the dataloader, which fetches ahead) from the per-step seed."""
        if args.augment != "none":
            batch["pixel_values"] = augment_batch(batch["pixel_values"], args.augment)
        return batch

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(**batch)
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), batch["labels"], reduction="none")
        return {
            "loss_sum": loss,
            "num_items": torch.ones_like(loss),
            "predictions": outputs.logits.argmax(dim=-1),
            "references": batch["labels"],
            "solver_nstep": outputs.solver_nstep.float(),
            "solver_residual": outputs.solver_residual.float(),
        }

    def compute_metrics(self, values: dict[str, torch.Tensor], eval_loss: float) -> dict[str, float]:
        metric = self.metric or load_packaged_metric("accuracy")
        result = metric.compute(
            predictions=values["predictions"].numpy(), references=values["references"].numpy()
        )
        return {"accuracy": float(result["accuracy"])}


__all__ = ["ImageClassificationTask", "RawImageData", "build_classifier", "load_images"]
