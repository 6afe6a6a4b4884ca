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

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import hf_deq
from benchmarks.solve_setup import make_inputs
from benchmarks.tables import table
from hf_deq.deq import CompiledCell
from hf_deq.variants import get_variant, list_variants

#: batch of each family when --batch_size is not given (the char recipe's 12; 32 digits images)
DEFAULT_BATCH = {"deq_transformer": 12, "mdeq": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets",
        default="deq-transformer-char,mdeq-tiny-digits",
        help="comma-separated presets (hf_deq.list_variants(include_test=True))",
    )
    parser.add_argument("--grad_estimator", default=None, help="gradient estimator (default: the preset's)")
    parser.add_argument(
        "--batch_size", type=int, default=None, help="batch (default: 12 sequences or 32 images)"
    )
    parser.add_argument("--seq_len", type=int, default=64, help="tokens per sequence (language models)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (median)")
    parser.add_argument(
        "--warmup_steps", type=int, default=2, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument(
        "--compile_backend",
        default="inductor",
        help="torch.compile backend (inductor; aot_eager for a smoke run)",
    )
    parser.add_argument(
        "--torch_num_threads", type=int, default=1, help="CPU intra-op threads (0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output_file", default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--overwrite_output_file", action="store_true", help="replace an existing --output_file"
    )
    args = parser.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    known = list_variants(include_test=True)
    unknown = [p for p in args.presets if p not in known]
    if unknown or not args.presets:
        parser.error(f"--presets: unknown {unknown or 'nothing given'}; choose from {known}")
    for name in ("steps", "seq_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup_steps < 1:
        parser.error(
            f"--warmup_steps must be >= 1 (the compiled model compiles there), got {args.warmup_steps}"
        )
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.output_file is not None and Path(args.output_file).exists() and not args.overwrite_output_file:
        parser.error(f"--output_file {args.output_file} exists; pass --overwrite_output_file to replace it")
    return args


def train_step(model, inputs) -> float:
    """Seconds of one forward + backward."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(**inputs).loss.backward()
    return time.perf_counter() - start


def benchmark_preset(preset: str, args: argparse.Namespace) -> dict:
    overrides = {"solver_on_failure": "ignore"}
    if args.grad_estimator is not None:
        overrides["grad_estimator"] = args.grad_estimator
    torch.manual_seed(args.seed)
    eager = hf_deq.create_model(preset, **overrides).train()
    compiled = copy.deepcopy(eager)
    compiled.set_solver(compiled.config.solver, compile_cell=True)
    for layer in compiled.deq_layers():
        layer.compiled_cell = CompiledCell({"backend": args.compile_backend})
    config = eager.config
    batch = args.batch_size or DEFAULT_BATCH[get_variant(preset).config_class.model_type]
    inputs = make_inputs(config, batch, args.seq_len, torch.Generator().manual_seed(args.seed))

    warmup = {"eager": 0.0, "compiled": 0.0}
    for _ in range(args.warmup_steps):
        warmup["eager"] += train_step(eager, inputs)
        warmup["compiled"] += train_step(compiled, inputs)
    graphs = counters["stats"]["unique_graphs"]
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        times["eager"].append(train_step(eager, inputs))
        times["compiled"].append(train_step(compiled, inputs))
    eager_ms = statistics.median(times["eager"]) * 1e3
    compiled_ms = statistics.median(times["compiled"]) * 1e3
    return {
        "preset": preset,
        "grad_estimator": config.grad_estimator,
        "parameters": sum(p.numel() for p in eager.parameters()),
        "batch_size": batch,
        "seq_len": args.seq_len if config.model_type != "mdeq" else None,
        "eager_step_ms": eager_ms,
        "compiled_step_ms": compiled_ms,
        "compiled_over_eager": compiled_ms / eager_ms,
        "compile_s": warmup["compiled"] - warmup["eager"],
        "graphs_compiled_in_timed_steps": counters["stats"]["unique_graphs"] - graphs,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.torch_num_threads > 0:
        torch.set_num_threads(args.torch_num_threads)
    print(
        f"# compiled cell ({args.compile_backend}) against eager: forward + backward, CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.steps} steps\n"
    )
    rows = [benchmark_preset(preset, args) for preset in args.presets]
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
    if args.output_file is not None:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
