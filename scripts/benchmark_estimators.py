#!/usr/bin/env python
"""Benchmark the DEQ engine's forward solvers and gradient estimators, optionally against torchdeq.

For each cell (``benchmarks.cells``: an MDEQ-like conv block and a transformer block) it prints (a) a
forward-solver table, (b) a gradient-estimator table and (c) the peak memory of a training step for forward
budgets of 10 and 40 iterations, then checks the project's targets against the numbers of the run
(``benchmarks.targets``). How each number is measured: ``benchmarks.measure``. With
``--output_file`` the same numbers are written as JSON (``benchmarks.run.run_benchmark``).

With ``--compare_torchdeq`` the same cells, inputs and fixed point also run through torchdeq
(``pip install --no-deps torchdeq``; not a dependency of this project; ``benchmarks.torchdeq_adapter``).

Usage:
    python scripts/benchmark_estimators.py [--device cpu|cuda] [--compare_torchdeq] [--dtype float32|bfloat16]
        [--repeats N] [--cells conv,transformer] [--quick] [--batch_size N] [--torch_num_threads N]
        [--output_file results.json [--overwrite_output_file]]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import CELLS, run_benchmark
from benchmarks.cells import QUICK_BATCH_SIZE
from benchmarks.flags import outside, split_commas
from benchmarks.tables import write_results
from benchmarks.torchdeq_adapter import import_torchdeq
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag


@dataclass(frozen=True)
class EstimatorBenchmarkFlags:
    """The flags of this script."""

    device: str = flag(
        "cuda" if torch.cuda.is_available() else "cpu",
        "where the cells run (default: cuda when available)",
        choices=["cpu", "cuda"],
    )
    compare_torchdeq: bool = flag(
        False, "also run torchdeq on the same cells (pip install --no-deps torchdeq)"
    )
    dtype: str = flag("float32", "autocast dtype of f", choices=["float32", "bfloat16"])
    repeats: int | None = flag(
        None, "timed repeats (median); default 3, with --quick 1", range=count_range(1)
    )
    cells: str = flag(",".join(CELLS), f"comma-separated subset of {','.join(CELLS)}")
    quick: bool = flag(
        False, f"batch {QUICK_BATCH_SIZE} on every cell and one timed repeat (a smoke run, not for quoting)"
    )
    batch_size: int | None = flag(
        None, "batch of every cell (default: 32 conv, 16 transformer)", range=count_range(1)
    )
    torch_num_threads: int = flag(
        1,
        "CPU intra-op threads (default 1; 0 keeps torch's default). On a shared machine OpenMP threads "
        "that lose their core stall every op: f took ~180 ms with 2 threads vs ~30 ms with 1 on a loaded "
        "2-core box",
        range=count_range(0),
    )
    seed: int = flag(0, "seed of the cells' weights and inputs")
    output_file: str | None = flag(None, "also write every number of the run as JSON here")
    overwrite_output_file: bool = flag(False, "replace an existing --output_file")

    @property
    def cell_list(self) -> list[str]:
        """The cells of ``--cells``, in order."""
        return split_commas(self.cells)


def parse_args(argv: list[str] | None = None) -> EstimatorBenchmarkFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(EstimatorBenchmarkFlags, description=__doc__.split("\n\n")[0])
    (flags,) = parser.parse_into_dataclasses(argv)
    if flags.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    unknown = sorted(set(outside(flags.cell_list, CELLS)))
    if unknown or not flags.cell_list:
        parser.error(
            f"--cells takes a comma-separated subset of {','.join(CELLS)}; got {unknown or 'nothing'}"
        )
    if flags.output_file is not None and Path(flags.output_file).exists() and not flags.overwrite_output_file:
        parser.error(f"--output_file {flags.output_file} exists; pass --overwrite_output_file to replace it")
    return flags


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark with the flags of ``argv``, print its tables; returns every number."""
    flags = parse_args(argv)
    device = torch.device(flags.device)
    if device.type == "cpu" and flags.torch_num_threads > 0:
        torch.set_num_threads(flags.torch_num_threads)
    repeats = flags.repeats or (1 if flags.quick else 3)
    batch_size = flags.batch_size or (QUICK_BATCH_SIZE if flags.quick else None)
    dtype = torch.bfloat16 if flags.dtype == "bfloat16" else torch.float32

    td = None
    if flags.compare_torchdeq:
        td, err = import_torchdeq()
        if td is None:
            print(
                f"torchdeq is not importable ({err!r}); install it without touching torch with "
                "`pip install --no-deps torchdeq`. Running without the comparison.\n"
            )
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# DEQ engine benchmark ({where}; torch {torch.__version__}; f under {flags.dtype}; median of {repeats})"
    )
    if td is not None:
        print(f"torchdeq {td.version} compared side by side in this run.")
    memory = (
        "torch.cuda.max_memory_allocated above the start of the region"
        if device.type == "cuda"
        else "peak bytes of CPU tensors allocated in the region (torch.profiler memory events)"
    )
    print(f"Memory: {memory}.")
    if dtype != torch.float32:
        print(
            f"f runs under {flags.dtype} autocast (states and solver algebra stay float32). Its rounding puts a floor "
            "near 1e-3 under the relative residuals, so solves marked as missing their tolerance ran their whole "
            "budget: compare such rows per evaluation, not per tolerance."
        )
    print()

    results = run_benchmark(
        flags.cell_list, device, dtype, repeats=repeats, batch_size=batch_size, seed=flags.seed, td=td
    )
    print(f"\ntotal benchmark time {results['total_time_s']:.0f} s")
    if flags.output_file is not None:
        write_results(flags.output_file, results)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
