#!/usr/bin/env python
"""Train an MDEQ image classifier with Accelerate, in the shape of accelerate's example scripts
(``get_dataloaders`` -> ``training_function`` -> ``main``).

Single process (CPU or one GPU)::

    python scripts/train_mdeq_classifier.py --output_dir outputs/mdeq-digits

Distributed / mixed precision (from the accelerate config, or ``--mixed_precision``)::

    accelerate launch scripts/train_mdeq_classifier.py --dataset_name uoft-cs/cifar10 \\
        --preset mdeq-tiny-cifar10 --augment crop_flip --output_dir outputs/mdeq-tiny-cifar10
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/train_mdeq_classifier.py ...

Data: ``--dataset_name digits`` (default; scikit-learn's bundled 8x8 digits as an HF ``Dataset``, split 80/20 with
a fixed seed, nothing downloaded), any HF image dataset (``--dataset_name uoft-cs/cifar10``: image and label
columns are detected from the features, the evaluation split is ``validation``, else ``test``, else a
``--train_val_split`` part of ``train``), or local image folders (``--train_dir`` / ``--validation_dir``, the
``imagefolder`` layout ``<dir>/<label>/<image>``).

Model: a preset (``--preset``, see ``hf_deq.list_variants("mdeq")``) or a saved model (``--model_name_or_path``);
every solver and gradient-estimator field of the config has a flag (``--grad_estimator implicit``, ...). The final
model is saved in ``--output_dir`` (safetensors) with its image processor, next to ``all_results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from datasets import ClassLabel, Dataset, DatasetDict, Features, load_dataset
from datasets import Image as ImageFeature
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForImageClassification, get_scheduler

import hf_deq  # noqa: F401  (registers the MDEQ Auto classes and presets)
from hf_deq import MDEQImageProcessor
from hf_deq.hub import add_hub_arguments, check_hub_args, push_from_args
from hf_deq.training_utils import (
    BufferRollback,
    EstimatorSchedule,
    NonFiniteStepGuard,
    add_deq_arguments,
    check_output_dir,
    deq_overrides,
    load_packaged_metric,
    log_step,
    parse_args_with_config_file,
    resolve_checkpoint,
    save_checkpoint_atomically,
    solver_stats,
    state_fingerprint,
)
from hf_deq.variants import create_config, get_variant

logger = get_logger(__name__)

DEFAULT_PRESET = "mdeq-tiny-digits"
DIGITS_SPLIT_SEED = 0


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="'digits' (default when no --train_dir: scikit-learn's 8x8 digits, no download) or an HF dataset id "
        "loaded with datasets.load_dataset, e.g. uoft-cs/cifar10",
    )
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_dir", default=None, help="local image folder (imagefolder layout) to train on")
    data.add_argument("--validation_dir", default=None, help="local image folder to evaluate on")
    data.add_argument("--image_column_name", default=None, help="default: the first Image feature")
    data.add_argument("--label_column_name", default=None, help="default: the first ClassLabel feature")
    data.add_argument(
        "--train_val_split", type=float, default=0.2, help="evaluation fraction split off train when needed"
    )
    data.add_argument("--split_seed", type=int, default=DIGITS_SPLIT_SEED, help="seed of that split")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument(
        "--augment",
        choices=["none", "crop", "crop_flip"],
        default="none",
        help="training augmentation: random crop after padding by image_size/8 (and horizontal flip)",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default=None, help=f"preset name (default {DEFAULT_PRESET})")
    model.add_argument(
        "--model_name_or_path", default=None, help="start from a saved model instead of a preset"
    )
    model.add_argument(
        "--config_overrides",
        type=json.loads,
        default=None,
        help='JSON of further config fields, e.g. \'{"dropout": 0.1, "image_size": 16}\'',
    )
    add_deq_arguments(parser)

    train = parser.add_argument_group("optimisation")
    train.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    train.add_argument("--learning_rate", type=float, default=2e-3)
    train.add_argument("--weight_decay", type=float, default=1e-4)
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--lr_scheduler_type", choices=["cosine", "linear", "constant"], default="cosine")
    train.add_argument("--num_warmup_steps", type=int, default=0, help="learning-rate warm-up steps")
    train.add_argument("--num_train_epochs", type=int, default=8)
    train.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    train.add_argument("--per_device_train_batch_size", type=int, default=32)
    train.add_argument("--per_device_eval_batch_size", type=int, default=128)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients to this norm")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    train.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="stop after N steps in a row with a non-finite loss or gradient (each is skipped)",
    )
    train.add_argument(
        "--torch_num_threads",
        type=int,
        default=None,
        help="intra-op CPU threads per process (torch.set_num_threads); 1 is much faster on a CPU shared with "
        "other jobs",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", default=None, help="where the model, checkpoints and results go")
    out.add_argument("--overwrite_output_dir", action="store_true")
    out.add_argument(
        "--checkpointing_steps", default=None, help="save a checkpoint every N steps, or 'epoch'"
    )
    out.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    out.add_argument(
        "--with_tracking", action="store_true", help="log to TensorBoard (in <output_dir>/mdeq_classifier)"
    )
    out.add_argument("--report_to", default="tensorboard")
    out.add_argument("--logging_steps", type=int, default=10)
    out.add_argument(
        "--log_file",
        default=None,
        help="append one JSON line per optimizer step (step, loss, skipped steps) and a final one with the "
        "weights' SHA-256; process i > 0 writes <log_file>.rank<i>",
    )
    out.add_argument(
        "--eval_every_epochs", type=int, default=1, help="evaluate every N epochs (and at the end)"
    )
    out.add_argument("--disable_tqdm", action="store_true")
    add_hub_arguments(parser)
    args = parse_args_with_config_file(parser, argv, Path(__file__).name)
    check_hub_args(args)

    if args.dataset_name is None and args.train_dir is None:
        args.dataset_name = "digits"
    if args.preset is None and args.model_name_or_path is None:
        args.preset = DEFAULT_PRESET
    if args.preset is not None:
        get_variant(args.preset)  # ValueError naming the available presets
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1:
            raise ValueError(
                f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}"
            )
    if (args.checkpointing_steps or args.resume_from_checkpoint) and args.output_dir is None:
        raise ValueError("--checkpointing_steps and --resume_from_checkpoint need --output_dir")
    return args


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def load_digits_dataset(test_size: float = 0.2, seed: int = DIGITS_SPLIT_SEED) -> DatasetDict:
    """scikit-learn's 1,797 8x8 digits as an HF ``DatasetDict`` (``image``: grayscale PIL, ``label``: ClassLabel),
    split into ``train`` / ``validation`` stratified by label with a fixed seed."""
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


def _detect_column(
    features: Features, wanted: str | None, kind: type, fallbacks: tuple[str, ...], what: str
) -> str:
    if wanted is not None:
        if wanted not in features:
            raise ValueError(f"--{what}_column_name {wanted!r} is not a column; columns: {list(features)}")
        return wanted
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    for name in fallbacks:
        if name in features:
            return name
    raise ValueError(f"cannot find the {what} column among {list(features)}; pass --{what}_column_name")


def load_datasets(args: argparse.Namespace) -> tuple[DatasetDict, str, str, list[str]]:
    """``(DatasetDict(train, validation), image column, label column, label names)``."""
    if args.train_dir is not None or args.validation_dir is not None:
        data_files = {}
        if args.train_dir is not None:
            data_files["train"] = os.path.join(args.train_dir, "**")
        if args.validation_dir is not None:
            data_files["validation"] = os.path.join(args.validation_dir, "**")
        raw = load_dataset("imagefolder", data_files=data_files)
    elif args.dataset_name == "digits":
        raw = load_digits_dataset(args.train_val_split, args.split_seed)
    else:
        raw = load_dataset(args.dataset_name, args.dataset_config_name)
    if "train" not in raw:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(raw)})")
    eval_split = next((s for s in ("validation", "valid", "val", "test") if s in raw), None)
    if eval_split is None:
        split = raw["train"].train_test_split(test_size=args.train_val_split, seed=args.split_seed)
        data = DatasetDict(train=split["train"], validation=split["test"])
    else:
        data = DatasetDict(train=raw["train"], validation=raw[eval_split])

    features = data["train"].features
    image_column = _detect_column(features, args.image_column_name, ImageFeature, ("image", "img"), "image")
    label_column = _detect_column(features, args.label_column_name, ClassLabel, ("label", "labels"), "label")
    label_feature = features[label_column]
    if isinstance(label_feature, ClassLabel):
        label_names = list(label_feature.names)
    else:
        values = sorted(set(data["train"][label_column]) | set(data["validation"][label_column]))
        label_names = [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
        data = data.map(lambda ex: {label_column: index[ex[label_column]]})
    if args.max_train_samples is not None:
        data["train"] = (
            data["train"]
            .shuffle(seed=args.seed)
            .select(range(min(args.max_train_samples, len(data["train"]))))
        )
    if args.max_eval_samples is not None:
        data["validation"] = data["validation"].select(
            range(min(args.max_eval_samples, len(data["validation"])))
        )
    return data, image_column, label_column, label_names


def augment_batch(pixel_values: torch.Tensor, augment: str) -> torch.Tensor:
    """``--augment``: ``crop`` pads by ``size / 8`` (at least 1 pixel) and crops back at a random offset;
    ``crop_flip`` also flips horizontally with probability 1/2."""
    if augment == "none":
        return pixel_values
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


def get_dataloaders(
    args: argparse.Namespace, data: DatasetDict, image_column: str, label_column: str, processor
) -> tuple[DataLoader, DataLoader]:
    """Training and evaluation dataloaders: images go through ``processor`` (channel conversion, resize,
    normalisation). Augmentation (``--augment``) is applied in the training loop, not here: the dataloader
    fetches one batch ahead, and drawing its randomness there keeps resumed runs exact."""

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        return {
            "pixel_values": processor(batch[image_column], return_tensors="pt")["pixel_values"],
            "labels": batch[label_column],
        }

    train_set = data["train"].with_transform(transform)
    eval_set = data["validation"].with_transform(transform)

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        pixel_values = torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float()
        return {"pixel_values": pixel_values, "labels": torch.tensor([int(e["labels"]) for e in examples])}

    generator = torch.Generator().manual_seed(args.seed)  # keeps the global RNG untouched: exact resumes
    train_dl = DataLoader(
        train_set,
        shuffle=True,
        batch_size=args.per_device_train_batch_size,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        generator=generator,
    )
    eval_dl = DataLoader(
        eval_set,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
    )
    return train_dl, eval_dl


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
def build_model_and_processor(args: argparse.Namespace, label_names: list[str]):
    """The model (from ``--preset`` or ``--model_name_or_path``, with the DEQ flags and ``--config_overrides``
    applied, and the dataset's labels) and its image processor."""
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}
    overrides = {**(args.config_overrides or {}), **deq_overrides(args)}
    if args.model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, **overrides, **labels, ignore_mismatched_sizes=True
        )
        processor = MDEQImageProcessor.for_saved_model(args.model_name_or_path, model.config)
    else:
        config = create_config(args.preset, **{**overrides, **labels})
        model = get_variant(args.preset).model_class(config)
        processor = MDEQImageProcessor.from_model_config(config)
    return model, processor


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases, norm parameters and weight-norm gains."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith("original0"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum, nesterov=args.nesterov)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def evaluate_model(model, eval_dl: DataLoader, accelerator: Accelerator, metric) -> dict[str, float]:
    """Accuracy (``evaluate``, gathered across processes), loss and solver statistics on ``eval_dl``."""
    model.eval()
    losses, nsteps, residuals = [], [], []
    for batch in eval_dl:
        with torch.no_grad():
            outputs = model(**batch)
        predictions = outputs.logits.argmax(dim=-1)
        # Per-example losses, so that the mean is exact also when the last batch of a multi-process run is
        # padded with repeated examples (gather_for_metrics drops those).
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), batch["labels"], reduction="none")
        predictions, references, loss, nstep, residual = accelerator.gather_for_metrics(
            (predictions, batch["labels"], loss, outputs.solver_nstep, outputs.solver_residual.float())
        )
        metric.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())
        losses.append(loss.cpu())
        nsteps.append(nstep.float().cpu())
        residuals.append(residual.cpu())
    model.train()
    residual = torch.cat(residuals)
    finite = residual[torch.isfinite(residual)]
    return {
        "num_examples": int(torch.cat(nsteps).numel()),  # gathered: the whole split, each example once
        "accuracy": float(metric.compute()["accuracy"]),
        "loss": float(torch.cat(losses).mean()),
        "solver_nstep": float(torch.cat(nsteps).mean()),
        "solver_residual": float(finite.mean()) if finite.numel() else math.inf,
    }


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated (CUDA), else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_function(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, save; return the results (``all_results.json`` plus per-epoch ``history`` and
    timings), so that other scripts (``compare_estimators.py``) can reuse the loop."""
    if args.torch_num_threads is not None:
        torch.set_num_threads(args.torch_num_threads)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()

    resuming = args.resume_from_checkpoint is not None
    if args.output_dir is not None:
        check_output_dir(args.output_dir, args.overwrite_output_dir, resuming=resuming)
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    with accelerator.main_process_first():
        data, image_column, label_column, label_names = load_datasets(args)
        metric = load_packaged_metric("accuracy")
    model, processor = build_model_and_processor(args, label_names)
    train_dl, eval_dl = get_dataloaders(args, data, image_column, label_column, processor)
    optimizer = build_optimizer(args, model)

    updates_per_epoch = math.ceil(
        len(train_dl) / args.gradient_accumulation_steps / accelerator.num_processes
    )
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(
        name=args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dl, eval_dl, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dl, eval_dl, lr_scheduler
    )
    updates_per_epoch = math.ceil(len(train_dl) / args.gradient_accumulation_steps)
    num_train_epochs = math.ceil(max_train_steps / updates_per_epoch)
    unwrapped = accelerator.unwrap_model(model)
    schedule = EstimatorSchedule(unwrapped, args.unrolled_warmup_steps, args.unrolled_warmup_depth)
    guard = NonFiniteStepGuard(args.max_nonfinite_steps, inspect_gradients=accelerator.scaler is None)
    rollback = BufferRollback(model)  # a skipped step leaves no NaN BatchNorm statistics behind

    if args.with_tracking:
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("mdeq_classifier", tracked)

    total_batch = (
        args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    )
    n_params = sum(p.numel() for p in unwrapped.parameters())
    logger.info("***** Running training *****")
    logger.info(f"  Model = {args.model_name_or_path or args.preset} ({n_params:,} parameters)")
    logger.info(f"  Estimator = {unwrapped.config.grad_estimator}, solver = {unwrapped.config.solver}")
    logger.info(f"  Num examples = {len(data['train'])} train, {len(data['validation'])} eval")
    logger.info(f"  Num epochs = {num_train_epochs}, total optimization steps = {max_train_steps}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch}")

    # -- resume ----------------------------------------------------------------------------------------------
    state: dict[str, Any] = {
        "completed_steps": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "train_time": 0.0,
        "forward_time": 0.0,
        "backward_time": 0.0,
        "timed_steps": 0,
        "loss_sum": 0.0,
        "loss_count": 0,
        "skipped_nonfinite": 0,
        "history": [],
    }
    if resuming:
        path = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        accelerator.print(f"Resumed from checkpoint: {path}")
        accelerator.load_state(str(path))
        saved = path / "trainer_state.json"
        if saved.exists():
            state.update(json.loads(saved.read_text()))
        else:  # a checkpoint without our state file: derive the position from its name
            kind, number = path.name.split("_")
            if kind == "epoch":
                state.update(epoch=int(number) + 1, completed_steps=(int(number) + 1) * updates_per_epoch)
            else:
                steps = int(number)
                state.update(
                    completed_steps=steps,
                    epoch=steps // updates_per_epoch,
                    batches_in_epoch=(steps % updates_per_epoch) * args.gradient_accumulation_steps,
                )
        guard.skipped = state["skipped_nonfinite"]

    def save_checkpoint(name: str) -> None:
        state["skipped_nonfinite"] = guard.skipped
        save_checkpoint_atomically(accelerator, args.output_dir, name, extra=state)
        if accelerator.is_main_process:
            push_from_args(args, model=unwrapped, processing_class=processor, step=state["completed_steps"])

    checkpoint_every = (
        int(args.checkpointing_steps) if (args.checkpointing_steps or "epoch").isdigit() else None
    )
    progress = tqdm(
        range(max_train_steps),
        initial=state["completed_steps"],
        disable=not accelerator.is_local_main_process or args.disable_tqdm,
        desc="train",
    )
    device = accelerator.device
    window: dict[str, float] = {
        "loss": 0.0,
        "correct": 0.0,
        "seen": 0.0,
        "nstep": 0.0,
        "residual": 0.0,
        "n": 0.0,
    }
    last_eval: dict[str, float] = {}
    model.train()

    for epoch in range(state["epoch"], num_train_epochs):
        if state["completed_steps"] >= max_train_steps:
            break
        train_dl.set_epoch(epoch)
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        active_dl = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        state["epoch"], state["batches_in_epoch"] = epoch, skip
        for batch in active_dl:
            schedule.update(state["completed_steps"])
            if args.augment != "none":
                batch["pixel_values"] = augment_batch(batch["pixel_values"], args.augment)
            with accelerator.accumulate(model):
                _sync(device)
                t0 = time.perf_counter()
                rollback.save()
                outputs = model(**batch)
                loss = outputs.loss
                _sync(device)
                t1 = time.perf_counter()
                finite = torch.isfinite(loss.detach()).float().reshape(1)
                if accelerator.num_processes > 1:  # every process must take the same branch (DDP)
                    finite = accelerator.gather(finite).min().reshape(1)
                if guard.check_loss(loss if bool(finite) else loss.detach() * math.nan):
                    accelerator.backward(loss)
                    _sync(device)
                    t2 = time.perf_counter()
                    if not accelerator.sync_gradients or guard.check_gradients(model.parameters()):
                        if accelerator.sync_gradients and args.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                        lr_scheduler.step()
                    else:
                        rollback.restore()
                        accelerator.print(
                            f"step {state['completed_steps']}: non-finite gradient, step skipped"
                        )
                else:
                    t2 = time.perf_counter()
                    rollback.restore()
                    accelerator.print(f"step {state['completed_steps']}: non-finite loss, step skipped")
                optimizer.zero_grad()
                _sync(device)
                t3 = time.perf_counter()
            state["batches_in_epoch"] += 1
            state["train_time"] += t3 - t0
            state["forward_time"] += t1 - t0
            state["backward_time"] += t2 - t1
            state["timed_steps"] += 1
            if bool(finite):
                state["loss_sum"] += float(loss.detach())
                state["loss_count"] += 1
                window["loss"] += float(loss.detach())
                window["correct"] += float((outputs.logits.argmax(-1) == batch["labels"]).sum())
                window["seen"] += batch["labels"].shape[0]
                stats = solver_stats(outputs)
                window["nstep"] += stats["solver_nstep"]
                window["residual"] += stats["solver_residual"]
                window["n"] += 1
            if not accelerator.sync_gradients:
                continue
            state["completed_steps"] += 1
            progress.update(1)
            step = state["completed_steps"]
            if args.log_file:
                log_step(
                    args.log_file,
                    accelerator,
                    {"step": step, "loss": float(loss.detach()), "skipped_nonfinite_steps": guard.skipped},
                )
            if step % args.logging_steps == 0 or step == max_train_steps:
                n = max(window["n"], 1.0)
                logs = {
                    "train_loss": window["loss"] / n,
                    "train_accuracy": window["correct"] / max(window["seen"], 1.0),
                    "solver_nstep": window["nstep"] / n,
                    "solver_residual": window["residual"] / n,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "skipped_nonfinite_steps": guard.skipped,
                }
                progress.set_postfix(
                    loss=f"{logs['train_loss']:.3f}",
                    acc=f"{logs['train_accuracy']:.3f}",
                    nstep=f"{logs['solver_nstep']:.1f}",
                    res=f"{logs['solver_residual']:.2e}",
                )
                if args.with_tracking:
                    accelerator.log(logs, step=step)
                window = dict.fromkeys(window, 0.0)
            if checkpoint_every and step % checkpoint_every == 0:
                save_checkpoint(f"step_{step}")
            if step >= max_train_steps:
                break

        last_epoch = epoch == num_train_epochs - 1 or state["completed_steps"] >= max_train_steps
        if (epoch + 1) % args.eval_every_epochs == 0 or last_epoch:
            eval_metrics = evaluate_model(model, eval_dl, accelerator, metric)
            last_eval = eval_metrics
            state["history"].append(
                {
                    "epoch": epoch + 1,
                    "step": state["completed_steps"],
                    "train_time": state["train_time"],
                    **{f"eval_{k}": v for k, v in eval_metrics.items()},
                }
            )
            logger.info(
                f"epoch {epoch + 1}: eval accuracy {eval_metrics['accuracy']:.4f}, loss {eval_metrics['loss']:.4f}, "
                f"solver nstep {eval_metrics['solver_nstep']:.1f}, residual {eval_metrics['solver_residual']:.2e}, "
                f"train time {state['train_time']:.1f}s"
            )
            if args.with_tracking:
                accelerator.log(
                    {f"eval_{k}": v for k, v in eval_metrics.items()}, step=state["completed_steps"]
                )
        state["epoch"], state["batches_in_epoch"] = epoch + 1, 0
        if args.checkpointing_steps == "epoch":
            save_checkpoint(f"epoch_{epoch}")
    progress.close()
    schedule.finish()
    if not last_eval:
        last_eval = evaluate_model(model, eval_dl, accelerator, metric)

    timed = max(state["timed_steps"], 1)
    epochs_done = max(state["completed_steps"] / updates_per_epoch, 1e-9)
    results = {
        "eval_accuracy": last_eval["accuracy"],
        "eval_loss": last_eval["loss"],
        "eval_solver_nstep": last_eval["solver_nstep"],
        "eval_solver_residual": last_eval["solver_residual"],
        "eval_num_examples": last_eval["num_examples"],
        "train_loss": state["loss_sum"] / max(state["loss_count"], 1),
        "train_runtime": state["train_time"],
        "train_time_per_epoch": state["train_time"] / epochs_done,
        "forward_time_per_step": state["forward_time"] / timed,
        "backward_time_per_step": state["backward_time"] / timed,
        "train_steps": state["completed_steps"],
        "epoch": epochs_done,
        "train_samples": len(data["train"]),
        "eval_samples": len(data["validation"]),
        "skipped_nonfinite_steps": guard.skipped,
        "peak_memory_mb": peak_memory_mb(device),
        "num_parameters": n_params,
        "grad_estimator": unwrapped.config.grad_estimator,
        "num_processes": accelerator.num_processes,
    }
    if args.with_tracking:
        accelerator.end_training()
    if args.log_file:
        log_step(args.log_file, accelerator, {"event": "end", **state_fingerprint(unwrapped)})
    if args.output_dir is not None:
        accelerator.wait_for_everyone()
        unwrapped.save_pretrained(
            args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
        if accelerator.is_main_process:
            processor.save_pretrained(args.output_dir)
            Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2))
            Path(args.output_dir, "history.json").write_text(json.dumps(state["history"], indent=2))
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        push_from_args(args, args.output_dir, model=unwrapped, processing_class=processor, metrics=results)
    logger.info(
        f"final eval accuracy {results['eval_accuracy']:.4f} after {results['train_runtime']:.1f}s of training"
    )
    return {**results, "history": state["history"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return training_function(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
