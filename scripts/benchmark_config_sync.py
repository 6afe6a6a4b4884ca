"""The cost of reading ``model.config`` at every forward (the DEQ fields as run-time knobs).

Every hf_deq model compares its config's DEQ fields with those its layers run with at the start of ``forward``
(``DEQModelMixin._sync_deq_config``). This script times forwards of a tiny model with an unchanged config, side
by side in one process: the real forward, and the same forward with that check replaced by a no-op (the
forward before config edits took effect). Blocks of the two alternate, so machine noise hits both alike.

    python scripts/benchmark_config_sync.py                     # test_mdeq_tiny and test_deq_transformer_tiny
    python scripts/benchmark_config_sync.py --repeats 40 --forwards 50 --torch_num_threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

import hf_deq
from hf_deq.modeling_deq import DEQModelMixin
from hf_deq.training.arguments import check_preset_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["test_mdeq_tiny", "test_deq_transformer_tiny"],
        help="the presets (random weights) to time",
    )
    parser.add_argument("--repeats", type=int, default=30, help="alternating blocks per variant")
    parser.add_argument("--forwards", type=int, default=40, help="forwards per block")
    parser.add_argument("--batch_size", type=int, default=2, help="inputs per forward")
    parser.add_argument(
        "--solver_max_iter", type=int, default=4, help="solver budget of every forward (train and eval)"
    )
    parser.add_argument(
        "--torch_num_threads", type=int, default=1, help="intra-op CPU threads (torch.set_num_threads)"
    )
    args = parser.parse_args(argv)
    for name in ("repeats", "forwards", "batch_size", "torch_num_threads"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: must be an integer >= 1, got {getattr(args, name)}")
    for preset in args.presets:
        check_preset_config(
            parser, preset, {"solver_max_iter": args.solver_max_iter}, {"solver_max_iter": "--solver_max_iter"},
            preset_flag="--presets",
        )  # fmt: skip
    return args


def tiny_inputs(config, batch: int) -> dict[str, torch.Tensor]:
    if config.model_type == "mdeq":
        return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size)}
    return {"input_ids": torch.randint(0, config.vocab_size, (batch, 8))}


def time_block(model, inputs, forwards: int) -> float:
    start = time.perf_counter()
    for _ in range(forwards):
        model(**inputs)
    return (time.perf_counter() - start) / forwards


def bench(preset: str, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    budget = {"solver_max_iter": args.solver_max_iter, "solver_eval_max_iter": args.solver_max_iter}
    model = hf_deq.create_model(preset, solver_on_failure="ignore", **budget).eval()
    inputs = tiny_inputs(model.config, args.batch_size)
    owners = [m for m in model.modules() if isinstance(m, DEQModelMixin)]
    times: dict[str, list[float]] = {"with check": [], "no-op check": []}
    with torch.no_grad():
        time_block(model, inputs, args.forwards)  # warm-up
        for _ in range(args.repeats):
            for label in times:
                for owner in owners:
                    if label == "no-op check":
                        owner._sync_deq_config = lambda: None  # instance attribute shadows the method
                    else:
                        owner.__dict__.pop("_sync_deq_config", None)
                times[label].append(time_block(model, inputs, args.forwards))
    for owner in owners:
        owner.__dict__.pop("_sync_deq_config", None)
    deq_owner = owners[-1]
    calls = 20000
    check_us = min(timeit.repeat(deq_owner._sync_deq_config, number=calls, repeat=5)) / calls * 1e6
    with_check, without = (statistics.median(times[k]) for k in times)
    return {
        "with_ms": with_check * 1e3,
        "without_ms": without * 1e3,
        "ratio": with_check / without,
        "check_us": check_us,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_num_threads)
    print(f"{args.repeats} alternating blocks x {args.forwards} eval forwards, batch {args.batch_size}")
    print(f"{'preset':<28} {'forward, check':>15} {'forward, no-op':>15} {'ratio':>7} {'check alone':>12}")
    for preset in args.presets:
        r = bench(preset, args)
        print(
            f"{preset:<28} {r['with_ms']:>12.3f} ms {r['without_ms']:>12.3f} ms {r['ratio']:>7.3f} "
            f"{r['check_us']:>9.2f} us"
        )


if __name__ == "__main__":
    main()
