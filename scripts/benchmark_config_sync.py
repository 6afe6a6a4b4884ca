"""The cost of reading ``model.config`` at every forward (the DEQ fields as run-time knobs).

Every hf_deq model compares its config's DEQ fields with those its layers run with at the start of ``forward``
(``DEQModelMixin._sync_deq_config``). This script times forwards of a tiny model with an unchanged config, side
by side in one process: the real forward, and the same forward with that check replaced by a no-op (the
forward before config edits took effect). Blocks of the two alternate, so machine noise hits both alike.

    python scripts/benchmark_config_sync.py                     # test_mdeq_tiny and test_deq_transformer_tiny
    python scripts/benchmark_config_sync.py --repeats 40 --forwards 50 --torch_num_threads 1
"""

from __future__ import annotations

import statistics
import time
import timeit
from dataclasses import dataclass

import torch

import hf_deq
from hf_deq.modeling_deq import DEQModelMixin
from hf_deq.training.arguments import check_preset_config
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag


@dataclass(frozen=True)
class ConfigSyncFlags:
    """The flags of this script."""

    presets: list[str] = flag(
        ["test_mdeq_tiny", "test_deq_transformer_tiny"], "the presets (random weights) to time", nargs="+"
    )
    repeats: int = flag(30, "alternating blocks per variant", range=count_range(1))
    forwards: int = flag(40, "forwards per block", range=count_range(1))
    batch_size: int = flag(2, "inputs per forward", range=count_range(1))
    solver_max_iter: int = flag(4, "solver budget of every forward (train and eval)")
    torch_num_threads: int = flag(1, "intra-op CPU threads (torch.set_num_threads)", range=count_range(1))


def parse_args(argv: list[str] | None = None) -> ConfigSyncFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(ConfigSyncFlags, description=__doc__)
    (flags,) = parser.parse_into_dataclasses(argv)
    for preset in flags.presets:
        check_preset_config(
            parser, preset, {"solver_max_iter": flags.solver_max_iter}, {"solver_max_iter": "--solver_max_iter"},
            preset_flag="--presets",
        )  # fmt: skip
    return flags


def tiny_inputs(config, batch: int) -> dict[str, torch.Tensor]:
    if config.model_type == "mdeq":
        return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size)}
    return {"input_ids": torch.randint(0, config.vocab_size, (batch, 8))}


def time_block(model, inputs, forwards: int) -> float:
    start = time.perf_counter()
    for _ in range(forwards):
        model(**inputs)
    return (time.perf_counter() - start) / forwards


def bench(preset: str, flags: ConfigSyncFlags) -> dict[str, float]:
    """Forward times of ``preset`` with the config check and with a no-op in its place, and the check alone."""
    torch.manual_seed(0)
    budget = {"solver_max_iter": flags.solver_max_iter, "solver_eval_max_iter": flags.solver_max_iter}
    model = hf_deq.create_model(preset, solver_on_failure="ignore", **budget).eval()
    inputs = tiny_inputs(model.config, flags.batch_size)
    owners = [m for m in model.modules() if isinstance(m, DEQModelMixin)]
    times: dict[str, list[float]] = {"with check": [], "no-op check": []}
    with torch.no_grad():
        time_block(model, inputs, flags.forwards)  # warm-up
        for _ in range(flags.repeats):
            for label in times:
                for owner in owners:
                    if label == "no-op check":
                        owner._sync_deq_config = lambda: None  # instance attribute shadows the method
                    else:
                        owner.__dict__.pop("_sync_deq_config", None)
                times[label].append(time_block(model, inputs, flags.forwards))
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


def main(argv: list[str] | None = None) -> None:
    """Time every preset of ``--presets`` and print one line each."""
    flags = parse_args(argv)
    torch.set_num_threads(flags.torch_num_threads)
    print(f"{flags.repeats} alternating blocks x {flags.forwards} eval forwards, batch {flags.batch_size}")
    print(f"{'preset':<28} {'forward, check':>15} {'forward, no-op':>15} {'ratio':>7} {'check alone':>12}")
    for preset in flags.presets:
        r = bench(preset, flags)
        print(
            f"{preset:<28} {r['with_ms']:>12.3f} ms {r['without_ms']:>12.3f} ms {r['ratio']:>7.3f} "
            f"{r['check_us']:>9.2f} us"
        )


if __name__ == "__main__":
    main()
