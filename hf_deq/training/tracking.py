"""What a run reports while it trains: accelerate trackers (``--with_tracking`` / ``--report_to``), the progress
bar, ``--log_file`` JSON lines (one per optimizer step and per rank), the weights' fingerprint, peak memory."""

from __future__ import annotations

import hashlib
import json
import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .arguments import TrainingArgs


def log_step(path: str | os.PathLike, accelerator, record: dict[str, Any]) -> None:
    """Append ``record`` (plus the ``accelerator``'s ``process_index`` / ``num_processes``) as one JSON line. Process 0 writes ``path``,
    process ``i > 0`` writes ``path.rank<i>``; a resumed run appends to the same file."""
    index = accelerator.process_index
    target = Path(path) if index == 0 else Path(f"{path}.rank{index}")
    line = {**record, "process_index": index, "num_processes": accelerator.num_processes}
    with open(target, "a") as f:
        f.write(json.dumps(line) + "\n")


def state_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of the parameters of ``model`` and of its whole ``state_dict`` (buffers included): equal fingerprints on every
    rank show that data-parallel training kept the replicas identical. Under FSDP2 it is a collective: every
    rank must call it."""

    def digest(tensors) -> str:
        h = hashlib.sha256()
        for name, tensor in tensors:
            tensor = tensor.detach()
            if hasattr(tensor, "full_tensor"):  # an FSDP2 shard: every rank gathers the full tensor
                tensor = tensor.full_tensor()
            h.update(name.encode())
            h.update(tensor.cpu().clone().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    return {
        "parameters_sha256": digest(sorted(model.named_parameters())),
        "state_dict_sha256": digest(sorted(model.state_dict().items())),
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated (CUDA), else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hyperparameters(args: TrainingArgs) -> dict[str, Any]:
    """The scalar flags, for the trackers."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}


class RunTracker:
    """Trackers, progress bar and per-step log of one run."""

    def __init__(self, accelerator, args: TrainingArgs, project_name: str, total: int, initial: int):
        from tqdm.auto import tqdm

        self.accelerator, self.args = accelerator, args
        if args.with_tracking:
            accelerator.init_trackers(project_name, hyperparameters(args))
        self.progress = tqdm(
            range(total),
            initial=initial,
            disable=not accelerator.is_local_main_process or args.disable_tqdm,
            desc="train",
        )

    def step(self, record: dict[str, Any]) -> None:
        """One optimizer step done: the bar moves, ``--log_file`` gets ``record``."""
        self.progress.update(1)
        if self.args.log_file:
            log_step(self.args.log_file, self.accelerator, record)

    @contextmanager
    def evaluation_progress(self, total: int) -> Iterator[Callable[[], None]]:
        """A second bar, under the training bar, for the ``total`` batches of one evaluation (gone when it ends):
        the context gives the function that advances it by one batch."""
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="eval", leave=False, position=1, disable=self.progress.disable)
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()

    def log(self, logs: dict[str, float], step: int, postfix: dict[str, str] | None = None) -> None:
        if postfix:
            self.progress.set_postfix(postfix)
        if self.args.with_tracking:
            self.accelerator.log(logs, step=step)

    def close(self, model: torch.nn.Module) -> None:
        """End the bar and the trackers; the final ``--log_file`` line holds the weights' fingerprint."""
        self.progress.close()
        if self.args.with_tracking:
            self.accelerator.end_training()
        if self.args.log_file:
            log_step(self.args.log_file, self.accelerator, {"event": "end", **state_fingerprint(model)})


__all__ = ["RunTracker", "hyperparameters", "log_step", "peak_memory_mb", "state_fingerprint"]
