"""Greedy generation with and without the equilibrium key/value cache of the DEQ-Transformer.

Without the cache, every new token re-solves the fixed point of the whole sequence; with it, the keys/values of
past equilibrium states are cached and each new token solves only its own state. The script times both for
``--new_tokens`` tokens after a random ``--prompt_length``-token prompt and reports how many generated tokens agree.

    python scripts/benchmark_generation.py                          # deq-transformer-small, 64 + 200 tokens
    python scripts/benchmark_generation.py --preset deq-transformer-char --torch_num_threads 1
    python scripts/benchmark_generation.py --model_name_or_path runs/shakespeare --prompt_length 64
    python scripts/benchmark_generation.py --count_parameters      # parameter count of every preset

On a shared CPU, ``--torch_num_threads 1`` avoids the OpenMP stalls that make tiny per-token operations slow when
the other cores are busy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM

import hf_deq
from hf_deq.hub import missing_local_model_dir
from hf_deq.training.arguments import check_preset_config
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag
from hf_deq.variants import get_variant


@dataclass(frozen=True)
class GenerationFlags:
    """The flags of this script."""

    preset: str = flag("deq-transformer-small", "the preset (random weights) to time")
    model_name_or_path: str | None = flag(None, "a trained model instead of a random preset")
    prompt_length: int = flag(64, "tokens of the random prompt", range=count_range(1))
    new_tokens: int = flag(200, "tokens generated per run", range=count_range(1))
    batch_size: int = flag(1, "prompts generated at once", range=count_range(1))
    solver_tol: float | None = flag(None, "override the model's solver_tol")
    config_overrides: str | None = flag(None, "JSON config fields, e.g. '{\"vocab_size\": 32000}'")
    torch_num_threads: int | None = flag(
        None, "intra-op CPU threads (torch.set_num_threads)", range=count_range(1)
    )
    seed: int = flag(0, "seed of the weights and the prompt")
    skip_uncached: bool = flag(False, "time the cached path only")
    count_parameters: bool = flag(False, "print every preset's parameter count")


def model_overrides(flags: GenerationFlags) -> dict[str, Any]:
    """The config fields ``flags`` set: ``--config_overrides`` (a JSON object) and ``--solver_tol``;
    ``ValueError`` when ``--config_overrides`` is not a JSON object."""
    try:
        overrides = json.loads(flags.config_overrides) if flags.config_overrides is not None else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON {flags.config_overrides!r}: {err}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"expected a JSON object, got {flags.config_overrides!r}")
    if flags.solver_tol is not None:
        overrides["solver_tol"] = flags.solver_tol
    return overrides


def parse_args(argv: list[str] | None = None) -> GenerationFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(GenerationFlags, description=__doc__)
    (flags,) = parser.parse_into_dataclasses(argv)
    try:
        overrides = model_overrides(flags)
    except ValueError as err:
        parser.error(f"argument --config_overrides: {err}")
    if flags.model_name_or_path is not None and (
        problem := missing_local_model_dir(flags.model_name_or_path)
    ):
        parser.error(f"argument --model_name_or_path: {problem}")
    if flags.model_name_or_path is None and not flags.count_parameters:
        config = check_preset_config(
            parser, flags.preset, overrides, {"solver_tol": "--solver_tol"}, model_type="deq_transformer"
        )
        if flags.prompt_length + flags.new_tokens > config.max_position_embeddings:
            parser.error(
                f"argument --new_tokens: prompt_length + new_tokens = {flags.prompt_length + flags.new_tokens} "
                f"exceeds max_position_embeddings={config.max_position_embeddings} of --preset {flags.preset}"
            )
    return flags


def preset_parameter_counts(include_test: bool = True) -> dict[str, int]:
    """Parameters of every DEQ-Transformer preset (tied weights once), built on the meta device (no memory)."""
    counts = {}
    for name in hf_deq.list_variants("", include_test=include_test):
        variant = get_variant(name)
        if variant.config_class is not hf_deq.DEQTransformerConfig:
            continue
        with torch.device("meta"):
            model = hf_deq.create_model(name)
        counts[name] = int(sum({id(p): p.numel() for p in model.parameters()}.values()))
    return counts


def timed_generate(model, input_ids, new_tokens: int, use_cache: bool) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Time greedy generation with and without the cache (or count parameters); returns the timings."""
    flags = parse_args(argv)
    if flags.count_parameters:
        for name, count in preset_parameter_counts().items():
            print(f"{name:34s} {count:>13,d} parameters")
        return {}
    if flags.torch_num_threads is not None:
        torch.set_num_threads(flags.torch_num_threads)
    torch.manual_seed(flags.seed)
    overrides = model_overrides(flags)
    if flags.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(flags.model_name_or_path, **overrides)
        source = flags.model_name_or_path
    else:
        model = hf_deq.create_model(flags.preset, solver_on_failure="ignore", **overrides)
        source = f"preset {flags.preset} (random weights)"
    model.eval()
    config = model.config
    if flags.prompt_length + flags.new_tokens > config.max_position_embeddings:
        raise SystemExit(
            f"prompt_length + new_tokens = {flags.prompt_length + flags.new_tokens} exceeds "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    prompt = torch.randint(0, config.vocab_size, (flags.batch_size, flags.prompt_length))
    print(
        f"model: {source}, {params:,} parameters, hidden {config.hidden_size}, solver {config.solver} "
        f"(max_iter {config.solver_eval_max_iter or config.solver_max_iter}, tol {config.solver_tol:g}); "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"prompt {flags.prompt_length} tokens x batch {flags.batch_size}, {flags.new_tokens} new tokens, greedy"
    )

    timed_generate(model, prompt[:, :8], 4, use_cache=True)  # warm-up
    cached, t_cached = timed_generate(model, prompt, flags.new_tokens, use_cache=True)
    print(f"with cache:    {t_cached:8.2f} s  ({1000 * t_cached / flags.new_tokens:.1f} ms/token)")
    result = {"cached_s": t_cached}
    if not flags.skip_uncached:
        uncached, t_uncached = timed_generate(model, prompt, flags.new_tokens, use_cache=False)
        new_c, new_u = cached[:, flags.prompt_length :], uncached[:, flags.prompt_length :]
        agree = (new_c == new_u).float().mean().item()
        first_diff = (new_c != new_u).any(0).nonzero()
        print(f"without cache: {t_uncached:8.2f} s  ({1000 * t_uncached / flags.new_tokens:.1f} ms/token)")
        print(
            f"speed-up: {t_uncached / t_cached:.1f}x; generated tokens that agree: {100 * agree:.1f}%", end=""
        )
        print(f" (first difference at new token {int(first_diff[0])})" if len(first_diff) else " (identical)")
        result.update({"uncached_s": t_uncached, "speedup": t_uncached / t_cached, "agreement": agree})
    return result


if __name__ == "__main__":
    main()
