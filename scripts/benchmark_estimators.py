#!/usr/bin/env python
"""Benchmark the DEQ engine's forward solvers and gradient estimators, optionally against torchdeq.

For each cell (``benchmarks.cells``: an MDEQ-like conv block and a transformer block) it prints (a) a
forward-solver table, (b) a gradient-estimator table and (c) the peak memory of a training step for forward
budgets of 10 and 40 iterations, then checks the project's targets against the numbers of the run
(``benchmarks.targets``). How each number is measured: ``benchmarks.measure``. With
``--output_file`` the same numbers are written as JSON (``benchmarks.run.run_benchmark``).

With ``--compare-torchdeq`` the same cells, inputs and fixed point also run through torchdeq
(``pip install --no-deps torchdeq``; not a dependency of this project; ``benchmarks.torchdeq_adapter``).

Usage:
    python scripts/benchmark_estimators.py [--device cpu|cuda] [--compare-torchdeq] [--dtype float32|bfloat16]
        [--repeats N] [--cells conv,transformer] [--quick] [--batch_size N] [--torch_num_threads N]
        [--output_file results.json [--overwrite_output_file]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks import CELLS, run_benchmark
from benchmarks.cells import QUICK_BATCH_SIZE
from benchmarks.tables import write_results
from benchmarks.torchdeq_adapter import import_torchdeq


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=["cpu", "cuda"],
        help="where the cells run (default: cuda when available)",
    )
    parser.add_argument(
        "--compare_torchdeq",
        "--compare-torchdeq",
        action="store_true",
        help="also run torchdeq on the same cells (pip install --no-deps torchdeq)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype of f"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (median); default 3, with --quick 1"
    )
    parser.add_argument(
        "--cells", default=",".join(CELLS), help=f"comma-separated subset of {','.join(CELLS)}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"batch {QUICK_BATCH_SIZE} on every cell and one timed repeat (a smoke run, not for quoting)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=None, help="batch of every cell (default: 32 conv, 16 transformer)"
    )
    parser.add_argument(
        "--torch_num_threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1; 0 keeps torch's default). On a shared machine OpenMP threads "
        "that lose their core stall every op: f took ~180 ms with 2 threads vs ~30 ms with 1 on a loaded 2-core box",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the cells' weights and inputs")
    parser.add_argument("--output_file", default=None, help="also write every number of the run as JSON here")
    parser.add_argument(
        "--overwrite_output_file", action="store_true", help="replace an existing --output_file"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.torch_num_threads < 0:
        parser.error(f"--torch_num_threads must be >= 0, got {args.torch_num_threads}")
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(args.cells) - set(CELLS))
    if unknown or not args.cells:
        parser.error(
            f"--cells takes a comma-separated subset of {','.join(CELLS)}; got {unknown or 'nothing'}"
        )
    if args.output_file is not None and Path(args.output_file).exists() and not args.overwrite_output_file:
        parser.error(f"--output_file {args.output_file} exists; pass --overwrite_output_file to replace it")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and args.torch_num_threads > 0:
        torch.set_num_threads(args.torch_num_threads)
    repeats = args.repeats or (1 if args.quick else 3)
    batch_size = args.batch_size or (QUICK_BATCH_SIZE if args.quick else None)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

    td = None
    if args.compare_torchdeq:
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
        f"# DEQ engine benchmark ({where}; torch {torch.__version__}; f under {args.dtype}; median of {repeats})"
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
            f"f runs under {args.dtype} autocast (states and solver algebra stay float32). Its rounding puts a floor "
            "near 1e-3 under the relative residuals, so solves marked as missing their tolerance ran their whole "
            "budget: compare such rows per evaluation, not per tolerance."
        )
    print()

    results = run_benchmark(
        args.cells, device, dtype, repeats=repeats, batch_size=batch_size, seed=args.seed, td=td
    )
    print(f"\ntotal benchmark time {results['total_time_s']:.0f} s")
    if args.output_file is not None:
        write_results(args.output_file, results)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
