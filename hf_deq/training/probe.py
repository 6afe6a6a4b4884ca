"""``--probe_steps N``: every N optimizer steps the loop measures, on one fixed probe batch, how close the
configured gradient estimator's parameter gradient is to the exact implicit one (``hf_deq.diagnostics.
gradient_alignment``; the phantom-gradient paper's Theorem 1 and Fig. 2), and with ``--probe_contractivity`` the
spectral radius of ``df/dz`` at the equilibrium. A probe leaves the weights, buffers, ``.grad`` and the RNG stream
as they were, so a probed run trains exactly as an unprobed one; its time is not training time.

The probe batch is the first ``--per_device_train_batch_size`` validation examples (a batch of the training
shape; the training set's first ones when there is no validation example), collated once, without touching the
global RNG, and moved to the device. With several processes only the main process probes, on the unwrapped model
(DDP's gradient hooks never fire: the probe takes gradients with ``torch.autograd.grad``); under FSDP, whose
sharded parameters would need every rank, probing is refused."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from ..diagnostics import contractivity, gradient_alignment
from .errors import TrainingError
from .task import TaskData

if TYPE_CHECKING:
    from .arguments import TrainingArgs


class ProbeError(TrainingError):
    """``--probe_steps`` cannot run with this set-up (a model without a DEQ layer, FSDP)."""

    exit_status = 2


def probe_batch(args: TrainingArgs, data: TaskData, device: torch.device) -> dict[str, Any]:
    """The fixed probe batch: the first ``per_device_train_batch_size`` validation examples (else training
    examples), collated by the task's collator, on ``device``. The global RNG is left as it was."""
    dataset = data.validation if len(data.validation) else data.train
    loader = DataLoader(dataset, batch_size=args.per_device_train_batch_size, collate_fn=data.collate_fn)
    with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws its base seed from the global RNG
        batch = next(iter(loader))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _is_sharded(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


class GradientProbe:
    """What ``--probe_steps`` / ``--probe_contractivity`` measure, on ``model`` (the unwrapped one) and ``batch``.

    ``measure()`` returns ``grad_alignment_cosine``, ``grad_alignment_relative_error``, ``probe_time`` (seconds)
    and, with ``contractivity``, ``spectral_radius_mean`` / ``spectral_radius_max`` (over the DEQ layers and the
    batch)."""

    def __init__(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        every: int,
        contractivity: bool = False,
        forward_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if _is_sharded(model):
            raise ProbeError(
                f"--probe_steps {every}: probing is not supported under FSDP (its sharded parameters need every "
                "rank); probe a DDP or single-process run, or use --probe_steps 0"
            )
        if not hasattr(model, "deq_layers"):
            raise ProbeError(
                f"--probe_steps {every}: {type(model).__name__} is not a DEQ (no solver, no gradient estimator "
                "to compare); use --probe_steps 0"
            )
        if "labels" not in batch:
            raise ProbeError(f"--probe_steps {every}: the probe batch has no labels (keys {sorted(batch)})")
        self.model, self.every, self.with_contractivity = model, every, contractivity
        self.batch = {**batch, **(forward_kwargs or {})}

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self) -> dict[str, float]:
        start = time.perf_counter()
        metrics = gradient_alignment(self.model, self.batch).as_metrics()
        if self.with_contractivity:
            radii = torch.cat([r.flatten().float() for r in contractivity(self.model, self.batch)])
            metrics["spectral_radius_mean"] = float(radii.mean())
            metrics["spectral_radius_max"] = float(radii.max())
        metrics["probe_time"] = time.perf_counter() - start
        return metrics


def probe_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """``all_results.json``'s probe keys: the last probe's figures (``grad_alignment_*``, ``spectral_radius_*``),
    its step, the number of probes and their mean time; empty when the run made none."""
    probes = [entry for entry in log_history if "grad_alignment_cosine" in entry]
    if not probes:
        return {}
    last = probes[-1]
    keys = [k for k in last if k.startswith(("grad_alignment_", "spectral_radius_"))]
    return {
        **{k: last[k] for k in keys},
        "grad_alignment_step": last["step"],
        "probe_count": len(probes),
        "probe_time_mean": sum(p["probe_time"] for p in probes) / len(probes),
    }


def build_probe(
    args: TrainingArgs,
    data: TaskData,
    model: torch.nn.Module,
    device: torch.device,
    forward_kwargs: dict[str, Any] | None = None,
) -> GradientProbe | None:
    """The run's probe on ``model`` (the unwrapped one), or ``None`` when ``--probe_steps`` is 0: then nothing is
    built and the step path is unchanged."""
    if not args.probe_steps:
        return None
    batch = probe_batch(args, data, device)
    return GradientProbe(model, batch, args.probe_steps, args.probe_contractivity, forward_kwargs)


__all__ = ["GradientProbe", "ProbeError", "build_probe", "probe_batch", "probe_summary"]
