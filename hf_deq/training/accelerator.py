"""Setting up a run: the ``Accelerator`` (seedable sampler, trackers, mixed precision from the flags
or the accelerate config), logging per process, the seed; and the per-step seed that makes a resumed run draw
the randomness (dropout, augmentation) the uninterrupted run drew. CPU threads: ``threads.ThreadGovernor``."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .arguments import TrainingArgs


def build_accelerator(args: TrainingArgs):
    """The run's ``Accelerator`` with logging set up and the global seed set."""
    import datasets
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

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
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    return accelerator


def step_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """A seed that depends on ``(seed, epoch, batch in epoch, rank)`` only (63 bits of a SHA-256)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{batch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_step(seed: int, epoch: int, batch: int, rank: int) -> None:
    """Seed torch's global generators (CPU and accelerators) for one training batch: its dropout masks and
    augmentation are then the same in a resumed run as in the uninterrupted one, whatever ran before."""
    torch.manual_seed(step_seed(seed, epoch, batch, rank))


__all__ = ["build_accelerator", "seed_step", "step_seed"]
