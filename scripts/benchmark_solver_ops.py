#!/usr/bin/env python
"""Measure the solve per engine variant: operators per solver iteration, training-step time, solver overhead.

``--mode ops`` (``benchmarks.op_counts``): per preset, solver (fixed_point, anderson, broyden) and
engine variant, the ATen operators dispatched per evaluation of f in an eval forward (10 evaluations, tol
1e-12): inside f, outside f (the solver's bookkeeping), in total, and the host syncs. ``--mode step``
(``benchmarks.step_time``): training-step time (forward + backward) of eager, compile_cell and
compile_solve side by side with compile time apart, and the solver overhead per evaluation of f of Anderson and
Broyden. ``--mode all`` runs both. Variants: eager, sync_free (``solver_kwargs={"check_every": None}``),
compile_cell, compile_solve and compile_solve_sync_free; an engine without ``compile_solve`` gets "n/a" rows.

Usage:
    python scripts/benchmark_solver_ops.py [--mode ops|step|all] [--presets deq-transformer-char,mdeq-tiny-digits]
        [--variants eager,compile_solve] [--solvers anderson,broyden] [--batch_size N] [--seq_len 64]
        [--max_iter 10] [--rounds 5] [--block_steps 2] [--warmup_steps 2] [--repeats 3]
        [--compile_backend inductor] [--torch_num_threads 1] [--output_file results.json [--overwrite_output_file]]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.op_counts import SOLVERS, ops_lines, ops_suite
from benchmarks.solve_setup import EVAL_MAX_ITER, SEQ_LEN, VARIANTS
from benchmarks.step_time import STEP_VARIANTS, step_lines, step_suite
from benchmarks.tables import write_results
from hf_deq.variants import list_variants

MODES = ("ops", "step", "all")
DEFAULT_PRESETS = "deq-transformer-char,mdeq-tiny-digits"


def _choices(parser, flag: str, text: str, allowed) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        parser.error(f"{flag}: got {bad or 'nothing'}; choose a comma-separated subset of {list(allowed)}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="all", choices=MODES, help="what to measure (default: all)")
    parser.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated presets")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated engine variants of {list(VARIANTS)} (default: all for ops, "
        f"{','.join(STEP_VARIANTS)} for step)",
    )
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="solvers of the operator counts")
    parser.add_argument(
        "--batch_size", type=int, default=None, help="batch (default: 16 sequences or 32 images)"
    )
    parser.add_argument("--seq_len", type=int, default=SEQ_LEN, help="tokens per sequence")
    parser.add_argument("--max_iter", type=int, default=EVAL_MAX_ITER, help="evaluations of f per eval solve")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed training steps (compilation)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of timed blocks, every variant per round"
    )
    parser.add_argument("--block_steps", type=int, default=2, help="training steps per timed block")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of each overhead solve (median)"
    )
    parser.add_argument(
        "--compile_backend", default="inductor", help="backend of compile_cell (aot_eager for a smoke run)"
    )
    parser.add_argument(
        "--torch_num_threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1; 0: torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output_file", default=None, help="also write every number as JSON here")
    parser.add_argument(
        "--overwrite_output_file", action="store_true", help="replace an existing --output_file"
    )
    args = parser.parse_args(argv)
    args.presets = _choices(parser, "--presets", args.presets, list_variants(include_test=True))
    args.solvers = _choices(parser, "--solvers", args.solvers, SOLVERS)
    if args.variants is not None:
        args.variants = _choices(parser, "--variants", args.variants, list(VARIANTS))
    for name in ("seq_len", "max_iter", "warmup_steps", "rounds", "block_steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.torch_num_threads < 0:
        parser.error(f"--torch_num_threads must be >= 0, got {args.torch_num_threads}")
    if args.output_file is not None and Path(args.output_file).exists() and not args.overwrite_output_file:
        parser.error(f"--output_file {args.output_file} exists; pass --overwrite_output_file to replace it")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.torch_num_threads > 0:
        torch.set_num_threads(args.torch_num_threads)
    started = time.perf_counter()
    print(f"# The solve measured (CPU, {torch.get_num_threads()} threads, torch {torch.__version__})\n")
    common = {"batch_size": args.batch_size, "seq_len": args.seq_len, "max_iter": args.max_iter}
    common |= {"seed": args.seed, "compile_backend": args.compile_backend}
    results: dict = {"settings": {k: v for k, v in vars(args).items() if k != "overwrite_output_file"}}
    results["settings"]["torch_num_threads"] = torch.get_num_threads()
    results["settings"]["torch_version"] = torch.__version__
    if args.mode in ("ops", "all"):
        variants = args.variants or list(VARIANTS)
        results["ops"] = ops_suite(args.presets, variants, args.solvers, **common)
        print("\n" + "\n".join(ops_lines(results["ops"], args.max_iter)) + "\n")
    if args.mode in ("step", "all"):
        variants = args.variants or list(STEP_VARIANTS)
        results["step"] = step_suite(
            args.presets,
            variants,
            warmup_steps=args.warmup_steps,
            rounds=args.rounds,
            block_steps=args.block_steps,
            repeats=args.repeats,
            **common,
        )
        print("\n" + "\n".join(step_lines(results["step"], args.max_iter)) + "\n")
    results["total_time_s"] = time.perf_counter() - started
    print(f"total benchmark time {results['total_time_s']:.0f} s")
    if args.output_file is not None:
        write_results(args.output_file, results)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
