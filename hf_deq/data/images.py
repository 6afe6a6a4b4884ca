"""Image-classification data: scikit-learn's digits (built in, nothing downloaded), any HF image dataset, local
``imagefolder`` trees; label and image column detection; the batch transform and collator; augmentation."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .errors import InputError, loading_dataset, shown_path

DIGITS = "digits"
DIGITS_SPLIT_SEED = 0
AUGMENTATIONS = ("none", "crop", "crop_flip")


def load_digits_dataset(test_size: float = 0.2, seed: int = DIGITS_SPLIT_SEED):
    """scikit-learn's 1,797 8x8 digits as an HF ``DatasetDict`` (``image``: grayscale PIL, ``label``: ClassLabel),
    split into ``train`` / ``validation`` stratified by label with a fixed seed."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    dataset = Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features,
    )
    split = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    return DatasetDict(train=split["train"], validation=split["test"])


def image_extensions() -> frozenset[str]:
    """The file extensions (lower case, with the dot) that Pillow opens."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def check_image_folder(path: str | os.PathLike, argument: str = "train_dir", min_classes: int = 2) -> None:
    """Raise ``InputError`` unless ``path`` is an ``imagefolder`` tree (``<path>/<label>/<image>``) with images of
    at least ``min_classes`` labels: missing, a file, empty, no image file, images outside label folders, or
    too few labels each name the folder. Stops walking as soon as enough labels are seen."""
    shown = shown_path(path)
    if not os.path.exists(path):
        raise InputError(argument, shown, f"{shown}: no such folder")
    if not os.path.isdir(path):
        raise InputError(argument, shown, f"{shown} is a file; expected a folder of <label>/<image> files")
    extensions = image_extensions()
    labels: set[str] = set()
    loose = False
    for root, dirs, files in os.walk(path):
        dirs.sort()
        if any(os.path.splitext(f)[1].lower() in extensions for f in files):
            label = os.path.relpath(root, path).split(os.sep)[0]
            loose = loose or label == os.curdir
            labels.add(label)
            if len(labels - {os.curdir}) >= min_classes:
                return
    labels.discard(os.curdir)
    layout = "expected the imagefolder layout <folder>/<label>/<image>"
    if not labels and not loose:
        what = "is empty" if not any(os.scandir(path)) else "holds no image files"
        raise InputError(argument, shown, f"{shown} {what}; {layout}")
    if not labels:
        raise InputError(argument, shown, f"{shown} holds images but no label folders; {layout}")
    raise InputError(
        argument,
        shown,
        f"{shown} holds images of {len(labels)} label(s) ({sorted(labels)}); a classifier needs at least "
        f"{min_classes}: {layout}",
    )


def detect_column(features, wanted: str | None, kind: type, fallbacks: tuple[str, ...], what: str) -> str:
    """``wanted`` if it is a column; else the first feature of type ``kind``; else the first of ``fallbacks``."""
    if wanted is not None:
        if wanted not in features:
            raise InputError(
                f"{what}_column_name",
                wanted,
                f"{wanted!r} is not a column of the dataset; its columns: {list(features)}",
            )
        return wanted
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    for name in fallbacks:
        if name in features:
            return name
    raise InputError(
        f"{what}_column_name",
        None,
        f"no {what} column found among {list(features)}; pass --{what}_column_name",
    )


def load_image_datasets(
    dataset_name: str | None = DIGITS,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    image_column_name: str | None = None,
    label_column_name: str | None = None,
    train_val_split: float = 0.2,
    split_seed: int = DIGITS_SPLIT_SEED,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> tuple[Any, str, str, list[str]]:
    """``(DatasetDict(train, validation), image column, label column, label names)``. The evaluation split is
    ``validation``, else ``valid``/``val``/``test``, else a ``train_val_split`` part of ``train``."""
    from datasets import ClassLabel, DatasetDict, load_dataset
    from datasets import Image as ImageFeature

    if train_dir is not None or validation_dir is not None:
        data_files = {}
        if train_dir is not None:
            check_image_folder(train_dir, "train_dir", min_classes=2)
            data_files["train"] = os.path.join(train_dir, "**")
        if validation_dir is not None:
            check_image_folder(validation_dir, "validation_dir", min_classes=1)
            data_files["validation"] = os.path.join(validation_dir, "**")
        raw = load_dataset("imagefolder", data_files=data_files)
    elif dataset_name in (None, DIGITS):
        raw = load_digits_dataset(train_val_split, split_seed)
    else:
        with loading_dataset("dataset_name", dataset_name):
            raw = load_dataset(dataset_name, dataset_config_name)
    if "train" not in raw:
        where = ("train_dir", train_dir) if train_dir is not None else ("dataset_name", dataset_name)
        raise InputError(*where, f"{where[1]} has no 'train' split (splits: {list(raw)})")
    eval_split = next((s for s in ("validation", "valid", "val", "test") if s in raw), None)
    if eval_split is None:
        split = raw["train"].train_test_split(test_size=train_val_split, seed=split_seed)
        data = DatasetDict(train=split["train"], validation=split["test"])
    else:
        data = DatasetDict(train=raw["train"], validation=raw[eval_split])

    features = data["train"].features
    image_column = detect_column(features, image_column_name, ImageFeature, ("image", "img"), "image")
    label_column = detect_column(features, label_column_name, ClassLabel, ("label", "labels"), "label")
    label_feature = features[label_column]
    if isinstance(label_feature, ClassLabel):
        label_names = list(label_feature.names)
    else:
        values = sorted(set(data["train"][label_column]) | set(data["validation"][label_column]))
        label_names = [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
        data = data.map(lambda ex: {label_column: index[ex[label_column]]})
    if len(label_names) < 2:
        raise InputError(
            "label_column_name",
            label_column,
            f"the label column {label_column!r} holds {len(label_names)} class(es) {label_names}; a classifier "
            "needs at least 2",
        )
    if max_train_samples is not None:
        train = data["train"].shuffle(seed=seed)
        data["train"] = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        data["validation"] = data["validation"].select(range(min(max_eval_samples, len(data["validation"]))))
    return data, image_column, label_column, label_names


def with_image_transform(dataset, processor, image_column: str, label_column: str):
    """``dataset`` whose rows are ``{"pixel_values", "labels"}``, images through ``processor`` on access."""

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        return {
            "pixel_values": processor(batch[image_column], return_tensors="pt")["pixel_values"],
            "labels": batch[label_column],
        }

    return dataset.with_transform(transform)


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` (float) and ``labels`` (long)."""
    pixel_values = torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float()
    return {"pixel_values": pixel_values, "labels": torch.tensor([int(e["labels"]) for e in examples])}


def augment_batch(pixel_values: torch.Tensor, augment: str) -> torch.Tensor:
    """``crop`` pads by ``size / 8`` (at least 1 pixel) and crops back at a random offset; ``crop_flip`` also
    flips horizontally with probability 1/2. Draws from the global RNG (seeded per step by the training loop)."""
    if augment == "none":
        return pixel_values
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; expected one of {list(AUGMENTATIONS)}")
    padding = max(1, pixel_values.shape[-1] // 8)
    return random_crop_flip(pixel_values, padding, flip=augment == "crop_flip")


def random_crop_flip(pixel_values: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch back to its size (and random horizontal flips)."""
    batch, _, height, width = pixel_values.shape
    if padding > 0:
        padded = torch.nn.functional.pad(pixel_values, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (batch,)).tolist()
        dx = torch.randint(0, 2 * padding + 1, (batch,)).tolist()
        pixel_values = torch.stack(
            [padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))]
        )
    if flip:
        mask = torch.rand(batch) < 0.5
        pixel_values = torch.where(mask.view(-1, 1, 1, 1), pixel_values.flip(-1), pixel_values)
    return pixel_values


def image_dataset_name(dataset_name: str | None, train_dir: str | None) -> str:
    """What a run trained on, for its results and model card: a Hub id, ``digits``, or a folder's base name."""
    return local_name(train_dir) if train_dir is not None else local_name(dataset_name or DIGITS)


def local_name(name: str) -> str:
    """A local file or folder's base name; anything else (a Hub id, a built-in name) unchanged."""
    return os.path.basename(os.path.normpath(name)) if os.path.exists(name) else name


__all__ = [
    "AUGMENTATIONS",
    "DIGITS",
    "augment_batch",
    "check_image_folder",
    "collate_images",
    "detect_column",
    "image_dataset_name",
    "image_extensions",
    "load_digits_dataset",
    "load_image_datasets",
    "local_name",
    "random_crop_flip",
    "with_image_transform",
]
