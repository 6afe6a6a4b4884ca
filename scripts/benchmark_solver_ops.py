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

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.flags import outside, split_commas
from benchmarks.op_counts import SOLVERS, ops_lines, ops_suite
from benchmarks.solve_setup import EVAL_MAX_ITER, SEQ_LEN, VARIANTS
from benchmarks.step_time import STEP_VARIANTS, step_lines, step_suite
from benchmarks.tables import write_results
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag
from hf_deq.variants import list_variants

MODES = ("ops", "step", "all")
DEFAULT_PRESETS = "deq-transformer-char,mdeq-tiny-digits"


@dataclass(frozen=True)
class SolverOpsFlags:
    """The flags of this script."""

    mode: str = flag("all", "what to measure", choices=list(MODES))
    presets: str = flag(DEFAULT_PRESETS, "comma-separated presets")
    variants: str | None = flag(
        None,
        f"comma-separated engine variants of {list(VARIANTS)} (default: all for ops, "
        f"{','.join(STEP_VARIANTS)} for step)",
    )
    solvers: str = flag(",".join(SOLVERS), "solvers of the operator counts")
    batch_size: int | None = flag(None, "batch (default: 16 sequences or 32 images)", range=count_range(1))
    seq_len: int = flag(SEQ_LEN, "tokens per sequence", range=count_range(1))
    max_iter: int = flag(EVAL_MAX_ITER, "evaluations of f per eval solve", range=count_range(1))
    warmup_steps: int = flag(2, "untimed training steps (compilation)", range=count_range(1))
    rounds: int = flag(5, "rounds of timed blocks, every variant per round", range=count_range(1))
    block_steps: int = flag(2, "training steps per timed block", range=count_range(1))
    repeats: int = flag(3, "timed repeats of each overhead solve (median)", range=count_range(1))
    compile_backend: str = flag("inductor", "backend of compile_cell (aot_eager for a smoke run)")
    torch_num_threads: int = flag(
        1, "CPU intra-op threads (default 1; 0: torch's default)", range=count_range(0)
    )
    seed: int = flag(0, "seed of the weights and inputs")
    output_file: str | None = flag(None, "also write every number as JSON here")
    overwrite_output_file: bool = flag(False, "replace an existing --output_file")

    @property
    def preset_list(self) -> list[str]:
        """The presets of ``--presets``, in order."""
        return split_commas(self.presets)

    @property
    def solver_list(self) -> list[str]:
        """The solvers of ``--solvers``, in order."""
        return split_commas(self.solvers)

    @property
    def variant_list(self) -> list[str] | None:
        """The engine variants of ``--variants`` (``None``: each mode's default)."""
        return None if self.variants is None else split_commas(self.variants)


def _check_subsets(parser: FlagParser, flags: SolverOpsFlags) -> None:
    """One ``error:`` line for a comma-separated option with a value outside its choices (or no value)."""
    for option, values, allowed in (
        ("--presets", flags.preset_list, list_variants(include_test=True)),
        ("--solvers", flags.solver_list, SOLVERS),
        ("--variants", flags.variant_list, list(VARIANTS)),
    ):
        if values is None:
            continue
        bad = outside(values, allowed)
        if bad or not values:
            parser.error(
                f"{option}: got {bad or 'nothing'}; choose a comma-separated subset of {list(allowed)}"
            )


def parse_args(argv: list[str] | None = None) -> SolverOpsFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(SolverOpsFlags, description=__doc__.split("\n\n")[0])
    (flags,) = parser.parse_into_dataclasses(argv)
    _check_subsets(parser, flags)
    if flags.output_file is not None and Path(flags.output_file).exists() and not flags.overwrite_output_file:
        parser.error(f"--output_file {flags.output_file} exists; pass --overwrite_output_file to replace it")
    return flags


def run_settings(flags: SolverOpsFlags) -> dict:
    """The ``settings`` entry of the JSON: every flag but ``--overwrite_output_file``, lists as lists."""
    resolved = {"presets": flags.preset_list, "solvers": flags.solver_list, "variants": flags.variant_list}
    settings = asdict(flags) | resolved
    del settings["overwrite_output_file"]
    settings["torch_num_threads"] = torch.get_num_threads()
    settings["torch_version"] = torch.__version__
    return settings


def main(argv: list[str] | None = None) -> dict:
    """Measure what ``--mode`` asks for, print the tables; returns every number."""
    flags = parse_args(argv)
    if flags.torch_num_threads > 0:
        torch.set_num_threads(flags.torch_num_threads)
    started = time.perf_counter()
    print(f"# The solve measured (CPU, {torch.get_num_threads()} threads, torch {torch.__version__})\n")
    common = {"batch_size": flags.batch_size, "seq_len": flags.seq_len, "max_iter": flags.max_iter}
    common |= {"seed": flags.seed, "compile_backend": flags.compile_backend}
    results: dict = {"settings": run_settings(flags)}
    if flags.mode in ("ops", "all"):
        variants = flags.variant_list or list(VARIANTS)
        results["ops"] = ops_suite(flags.preset_list, variants, flags.solver_list, **common)
        print("\n" + "\n".join(ops_lines(results["ops"], flags.max_iter)) + "\n")
    if flags.mode in ("step", "all"):
        variants = flags.variant_list or list(STEP_VARIANTS)
        results["step"] = step_suite(
            flags.preset_list,
            variants,
            warmup_steps=flags.warmup_steps,
            rounds=flags.rounds,
            block_steps=flags.block_steps,
            repeats=flags.repeats,
            **common,
        )
        print("\n" + "\n".join(step_lines(results["step"], flags.max_iter)) + "\n")
    results["total_time_s"] = time.perf_counter() - started
    print(f"total benchmark time {results['total_time_s']:.0f} s")
    if flags.output_file is not None:
        write_results(flags.output_file, results)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
