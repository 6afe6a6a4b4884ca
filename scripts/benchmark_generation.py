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

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

import hf_deq
from hf_deq.hub import missing_local_model_dir
from hf_deq.training.arguments import check_preset_config
from hf_deq.variants import get_variant


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="deq-transformer-small", help="the preset (random weights) to time"
    )
    parser.add_argument(
        "--model_name_or_path", default=None, help="a trained model instead of a random preset"
    )
    parser.add_argument("--prompt_length", type=int, default=64, help="tokens of the random prompt")
    parser.add_argument("--new_tokens", type=int, default=200, help="tokens generated per run")
    parser.add_argument("--batch_size", type=int, default=1, help="prompts generated at once")
    parser.add_argument("--solver_tol", type=float, default=None, help="override the model's solver_tol")
    parser.add_argument(
        "--config_overrides",
        type=json.loads,
        default=None,
        help="JSON config fields, e.g. '{\"vocab_size\": 32000}'",
    )
    parser.add_argument(
        "--torch_num_threads", type=int, default=None, help="intra-op CPU threads (torch.set_num_threads)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    parser.add_argument("--skip_uncached", action="store_true", help="time the cached path only")
    parser.add_argument(
        "--count_parameters", action="store_true", help="print every preset's parameter count"
    )
    args = parser.parse_args(argv)
    for name in ("prompt_length", "new_tokens", "batch_size", "torch_num_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"argument --{name}: must be an integer >= 1, got {getattr(args, name)}")
    if args.model_name_or_path is not None and (problem := missing_local_model_dir(args.model_name_or_path)):
        parser.error(f"argument --model_name_or_path: {problem}")
    if args.model_name_or_path is None and not args.count_parameters:
        overrides = dict(args.config_overrides or {})
        if args.solver_tol is not None:
            overrides["solver_tol"] = args.solver_tol
        config = check_preset_config(
            parser, args.preset, overrides, {"solver_tol": "--solver_tol"}, model_type="deq_transformer"
        )
        if args.prompt_length + args.new_tokens > config.max_position_embeddings:
            parser.error(
                f"argument --new_tokens: prompt_length + new_tokens = {args.prompt_length + args.new_tokens} "
                f"exceeds max_position_embeddings={config.max_position_embeddings} of --preset {args.preset}"
            )
    return args


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.count_parameters:
        for name, count in preset_parameter_counts().items():
            print(f"{name:34s} {count:>13,d} parameters")
        return {}
    if args.torch_num_threads is not None:
        torch.set_num_threads(args.torch_num_threads)
    torch.manual_seed(args.seed)
    overrides = dict(args.config_overrides or {})
    if args.solver_tol is not None:
        overrides["solver_tol"] = args.solver_tol
    if args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **overrides)
        source = args.model_name_or_path
    else:
        model = hf_deq.create_model(args.preset, solver_on_failure="ignore", **overrides)
        source = f"preset {args.preset} (random weights)"
    model.eval()
    config = model.config
    if args.prompt_length + args.new_tokens > config.max_position_embeddings:
        raise SystemExit(
            f"prompt_length + new_tokens = {args.prompt_length + args.new_tokens} exceeds "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    prompt = torch.randint(0, config.vocab_size, (args.batch_size, args.prompt_length))
    print(
        f"model: {source}, {params:,} parameters, hidden {config.hidden_size}, solver {config.solver} "
        f"(max_iter {config.solver_eval_max_iter or config.solver_max_iter}, tol {config.solver_tol:g}); "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"prompt {args.prompt_length} tokens x batch {args.batch_size}, {args.new_tokens} new tokens, greedy"
    )

    timed_generate(model, prompt[:, :8], 4, use_cache=True)  # warm-up
    cached, t_cached = timed_generate(model, prompt, args.new_tokens, use_cache=True)
    print(f"with cache:    {t_cached:8.2f} s  ({1000 * t_cached / args.new_tokens:.1f} ms/token)")
    result = {"cached_s": t_cached}
    if not args.skip_uncached:
        uncached, t_uncached = timed_generate(model, prompt, args.new_tokens, use_cache=False)
        new_c, new_u = cached[:, args.prompt_length :], uncached[:, args.prompt_length :]
        agree = (new_c == new_u).float().mean().item()
        first_diff = (new_c != new_u).any(0).nonzero()
        print(f"without cache: {t_uncached:8.2f} s  ({1000 * t_uncached / args.new_tokens:.1f} ms/token)")
        print(
            f"speed-up: {t_uncached / t_cached:.1f}x; generated tokens that agree: {100 * agree:.1f}%", end=""
        )
        print(f" (first difference at new token {int(first_diff[0])})" if len(first_diff) else " (identical)")
        result.update({"uncached_s": t_uncached, "speedup": t_uncached / t_cached, "agreement": agree})
    return result


if __name__ == "__main__":
    main()
