"""Image data (``hf_deq.data.images``, what ``train_mdeq_classifier.py`` trains on): local image folders and
Hub-style datasets, their columns and splits detected, batches through the image processor; augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hf_deq import MDEQImageProcessor, create_config
from hf_deq.data.images import (
    augment_batch,
    collate_images,
    image_dataset_name,
    load_image_datasets,
    with_image_transform,
)


def _write_image_folder(root: Path, labels: list[str], per_label: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            pixels = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode="RGB").save(root / label / f"{i}.png")


def test_image_folders_and_hub_style_datasets_load_with_their_columns_and_splits(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    _write_image_folder(tmp_path / "train", ["cat", "dog"], 4, seed=0)
    _write_image_folder(tmp_path / "val", ["cat", "dog"], 2, seed=1)
    data, image_column, label_column, names = load_image_datasets(
        train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val")
    )
    assert (len(data["train"]), len(data["validation"])) == (8, 4)
    assert (image_column, label_column, names) == ("image", "label", ["cat", "dog"])
    data, *_ = load_image_datasets(train_dir=str(tmp_path / "train"), train_val_split=0.25)
    assert (len(data["train"]), len(data["validation"])) == (6, 2)  # no validation folder: split off train
    assert image_dataset_name("digits", str(tmp_path / "train")) == "train"

    # A CIFAR-like Hub layout: columns `img` / `fine` (ClassLabel), splits train / test, loaded by load_dataset.
    features = Features(
        {"idx": Value("int64"), "img": ImageFeature(), "fine": ClassLabel(names=["a", "b", "c"])}
    )
    rng = np.random.default_rng(0)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)) for _ in range(n)]
        return Dataset.from_dict(
            {"idx": list(range(n)), "img": images, "fine": [i % 3 for i in range(n)]}, features=features
        )

    hub = tmp_path / "hub"
    for name, n in (("train", 6), ("test", 3)):
        (hub / "data").mkdir(parents=True, exist_ok=True)
        split(n).to_parquet(str(hub / "data" / f"{name}-00000-of-00001.parquet"))
    data, image_column, label_column, names = load_image_datasets(dataset_name=str(hub))
    assert (image_column, label_column, names) == ("img", "fine", ["a", "b", "c"])
    assert (len(data["train"]), len(data["validation"])) == (6, 3)  # `test` is the evaluation split
    assert (
        image_dataset_name(str(hub), None) == "hub"
        and image_dataset_name("uoft-cs/cifar10", None) == "uoft-cs/cifar10"
    )
    processor = MDEQImageProcessor.from_model_config(create_config("test_mdeq_tiny"))
    loader = DataLoader(
        with_image_transform(data["validation"], processor, image_column, label_column),
        batch_size=3,
        collate_fn=collate_images,
    )
    batch = next(iter(loader))
    assert tuple(batch["pixel_values"].shape) == (3, 1, 8, 8) and batch["labels"].tolist() == [0, 1, 2]


def test_augmentation_keeps_the_shape_and_depends_on_the_global_seed_only():
    pixels = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    assert augment_batch(pixels, "none") is pixels
    torch.manual_seed(0)
    a = augment_batch(pixels, "crop_flip")
    torch.manual_seed(0)
    b = augment_batch(pixels, "crop_flip")
    assert a.shape == pixels.shape and torch.equal(a, b) and not torch.equal(a, pixels)
