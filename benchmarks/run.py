"""One whole benchmark: every suite on every cell, the target checks, and the tables printed as they finish."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from . import engines
from .cells import build_bench
from .measure import Timer
from .suites import estimator_suite, forward_suite, memory_suite
from .tables import estimator_lines, forward_lines, memory_lines, target_lines
from .targets import check_targets
from .torchdeq_adapter import NOTES, TorchDEQ


def settings(device: torch.device, dtype: torch.dtype, repeats: int, td: TorchDEQ | None) -> dict:
    """What the run used: device, versions and the shared solver settings."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchdeq_version": None if td is None else td.version,
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        "fwd_tol": engines.FWD_TOL,
        "fwd_max_iter": engines.FWD_MAX_ITER,
        "grad_tol": engines.GRAD_TOL,
        "grad_max_iter": engines.GRAD_MAX_ITER,
        "memory_budgets": list(engines.MEMORY_BUDGETS),
    }


def run_benchmark(
    cells: Sequence[str],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    repeats: int = 3,
    batch_size: int | None = None,
    seed: int = 0,
    td: TorchDEQ | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the suites on each cell; ``echo`` receives each table as it finishes. Returns the JSON-ready
    ``{"settings", "cells": {name: {"batch_size", "state_dim", "forward", "estimators", "memory"}}, "targets",
    "total_time_s"}``."""
    compared = td is not None
    timer = Timer(device, repeats)
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for name in cells:
        bench = build_bench(name, device, dtype, batch_size, seed)
        batch, dim = bench.z0.shape
        echo(f"## {name} cell: batch {batch}, state dim {dim}\n")
        forward = forward_suite(bench, timer, td)
        echo("\n".join(forward_lines(name, forward, compared)) + "\n")
        estimators = estimator_suite(bench, timer, td)
        echo("\n".join(estimator_lines(name, estimators, compared)) + "\n")
        memory = memory_suite(bench, td)
        echo("\n".join(memory_lines(name, memory, compared)) + "\n")
        results[name] = {
            "batch_size": batch,
            "state_dim": dim,
            "forward": forward,
            "estimators": estimators,
            "memory": memory,
        }
    targets = check_targets(results)
    echo("\n".join(target_lines(targets)) + "\n")
    if compared:
        echo(NOTES)
    return {
        "settings": settings(device, dtype, repeats, td),
        "cells": results,
        "targets": targets,
        "total_time_s": time.perf_counter() - started,
    }
