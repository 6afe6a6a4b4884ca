#!/usr/bin/env python
"""Training-step time of a DEQ with its cell compiled (``compile_cell=True``) against the same model eager.

For each preset two copies of one model (same weights, same inputs) run forward + backward: first the warm-up
steps (the compiled copy compiles there; their time is reported as compile time), then ``--steps`` steps timed
round-robin, eager and compiled in turns, so that load on the machine hits both alike (quote the ratio, from one
run). Also reported: graphs compiled during the timed steps (0 expected: no recompiles per step).

    python scripts/benchmark_compile_cell.py [--presets deq-transformer-char,mdeq-tiny-digits] [--steps 10]
        [--batch_size N] [--seq_len 64] [--compile_backend inductor] [--output_file results.json]
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import hf_deq
from benchmarks.flags import outside, split_commas
from benchmarks.solve_setup import make_inputs
from benchmarks.tables import table
from hf_deq.deq import CompiledCell
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag
from hf_deq.variants import get_variant, list_variants

#: batch of each family when --batch_size is not given (the char recipe's 12; 32 digits images)
DEFAULT_BATCH = {"deq_transformer": 12, "mdeq": 32}


@dataclass(frozen=True)
class CompileCellFlags:
    """The flags of this script."""

    presets: str = flag(
        "deq-transformer-char,mdeq-tiny-digits",
        "comma-separated presets (hf_deq.list_variants(include_test=True))",
    )
    grad_estimator: str | None = flag(None, "gradient estimator (default: the preset's)")
    batch_size: int | None = flag(None, "batch (default: 12 sequences or 32 images)", range=count_range(1))
    seq_len: int = flag(64, "tokens per sequence (language models)", range=count_range(1))
    steps: int = flag(10, "timed steps per model (median)", range=count_range(1))
    warmup_steps: int = flag(2, "untimed steps first (compilation happens here)", range=count_range(1))
    compile_backend: str = flag("inductor", "torch.compile backend (inductor; aot_eager for a smoke run)")
    torch_num_threads: int = flag(1, "CPU intra-op threads (default 1; 0: torch's default)")
    seed: int = flag(0, "seed of the weights and inputs")
    output_file: str | None = flag(None, "also write the rows as JSON here")
    overwrite_output_file: bool = flag(False, "replace an existing --output_file")

    @property
    def preset_list(self) -> list[str]:
        """The presets of ``--presets``, in order."""
        return split_commas(self.presets)


def parse_args(argv: list[str] | None = None) -> CompileCellFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(CompileCellFlags, description=__doc__.split("\n\n")[0])
    (flags,) = parser.parse_into_dataclasses(argv)
    known = list_variants(include_test=True)
    unknown = outside(flags.preset_list, known)
    if unknown or not flags.preset_list:
        parser.error(f"--presets: unknown {unknown or 'nothing given'}; choose from {known}")
    if flags.output_file is not None and Path(flags.output_file).exists() and not flags.overwrite_output_file:
        parser.error(f"--output_file {flags.output_file} exists; pass --overwrite_output_file to replace it")
    return flags


def train_step(model, inputs) -> float:
    """Seconds of one forward + backward."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(**inputs).loss.backward()
    return time.perf_counter() - start


def benchmark_preset(preset: str, flags: CompileCellFlags) -> dict:
    """Eager and compiled step times of ``preset`` under ``flags``: one row of the table."""
    overrides = {"solver_on_failure": "ignore"}
    if flags.grad_estimator is not None:
        overrides["grad_estimator"] = flags.grad_estimator
    torch.manual_seed(flags.seed)
    eager = hf_deq.create_model(preset, **overrides).train()
    compiled = copy.deepcopy(eager)
    compiled.set_solver(compiled.config.solver, compile_cell=True)
    for layer in compiled.deq_layers():
        layer.compiled_cell = CompiledCell({"backend": flags.compile_backend})
    config = eager.config
    batch = flags.batch_size or DEFAULT_BATCH[get_variant(preset).config_class.model_type]
    inputs = make_inputs(config, batch, flags.seq_len, torch.Generator().manual_seed(flags.seed))

    warmup = {"eager": 0.0, "compiled": 0.0}
    for _ in range(flags.warmup_steps):
        warmup["eager"] += train_step(eager, inputs)
        warmup["compiled"] += train_step(compiled, inputs)
    graphs = counters["stats"]["unique_graphs"]
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(flags.steps):
        times["eager"].append(train_step(eager, inputs))
        times["compiled"].append(train_step(compiled, inputs))
    eager_ms = statistics.median(times["eager"]) * 1e3
    compiled_ms = statistics.median(times["compiled"]) * 1e3
    return {
        "preset": preset,
        "grad_estimator": config.grad_estimator,
        "parameters": sum(p.numel() for p in eager.parameters()),
        "batch_size": batch,
        "seq_len": flags.seq_len if config.model_type != "mdeq" else None,
        "eager_step_ms": eager_ms,
        "compiled_step_ms": compiled_ms,
        "compiled_over_eager": compiled_ms / eager_ms,
        "compile_s": warmup["compiled"] - warmup["eager"],
        "graphs_compiled_in_timed_steps": counters["stats"]["unique_graphs"] - graphs,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every preset of ``--presets`` eager and compiled; print the table, returns its rows."""
    flags = parse_args(argv)
    if flags.torch_num_threads > 0:
        torch.set_num_threads(flags.torch_num_threads)
    print(
        f"# compiled cell ({flags.compile_backend}) against eager: forward + backward, CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {flags.steps} steps\n"
    )
    rows = [benchmark_preset(preset, flags) for preset in flags.preset_list]
    headers = ["preset", "estimator", "batch", "eager ms/step", "compiled ms/step", "compiled/eager"]
    headers += ["compile s", "recompiles in timed steps"]
    cells = [
        [
            r["preset"],
            r["grad_estimator"],
            str(r["batch_size"]) + (f" x {r['seq_len']}" if r["seq_len"] else ""),
            f"{r['eager_step_ms']:.1f}",
            f"{r['compiled_step_ms']:.1f}",
            f"{r['compiled_over_eager']:.2f}x",
            f"{r['compile_s']:.1f}",
            str(r["graphs_compiled_in_timed_steps"]),
        ]
        for r in rows
    ]
    print(table(headers, cells))
    if flags.output_file is not None:
        Path(flags.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(flags.output_file).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
