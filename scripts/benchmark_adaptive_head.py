#!/usr/bin/env python
"""What the adaptive embedding / softmax of ``deq-transformer-wt103`` buys over a plain tied embedding at the
WikiText-103 vocabulary (267,735 words): parameters, and time and peak memory of the LM head's loss (forward and
backward) on a batch of hidden states. The DEQ block is left out: it is the same in both.

    python scripts/benchmark_adaptive_head.py [--batch 4] [--seq_len 150] [--repeats 5] [--device cpu|cuda]

Both heads are built exactly as ``DEQTransformerForCausalLM`` builds them (the plain one: ``nn.Embedding`` +
tied ``nn.Linear`` and cross-entropy; the adaptive one: ``AdaptiveEmbedding`` + tied
``ProjectedAdaptiveLogSoftmax``). Targets are drawn from a Zipf law over the vocabulary, roughly like word
frequencies, so most fall in the shortlist as in real text. Times are medians over ``--repeats`` after a warm-up;
peak memory is the largest tensor memory allocated during one loss + backward (CUDA:
``max_memory_allocated``; CPU: the profiler's allocation events).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import hf_deq
from hf_deq.models.deq_transformer.adaptive_softmax import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from hf_deq.training.arguments import check_preset_config
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag


@dataclass(frozen=True)
class AdaptiveHeadFlags:
    """The flags of this script."""

    batch: int = flag(4, "sequences per timed forward", range=count_range(1))
    seq_len: int = flag(150, "tokens per sequence", range=count_range(1))
    repeats: int = flag(5, "timed repeats per head (the best is reported)", range=count_range(1))
    device: str = flag("cpu", "where to run", choices=["cpu", "cuda"])
    torch_num_threads: int = flag(1, "intra-op CPU threads (torch.set_num_threads)", range=count_range(1))
    preset: str = flag("deq-transformer-wt103", "the adaptive preset to compare")


def parse_args(argv: list[str] | None = None) -> AdaptiveHeadFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(AdaptiveHeadFlags, description=__doc__)
    (flags,) = parser.parse_into_dataclasses(argv)
    config = check_preset_config(parser, flags.preset, model_type="deq_transformer")
    if not config.adaptive_cutoffs:
        parser.error(f"argument --preset: {flags.preset} has no adaptive_cutoffs")
    return flags


def zipf_targets(vocab_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids with probability ~ 1 / (rank + 1): frequent words first, as the vocabulary is ordered."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    return torch.multinomial(weights, count, replacement=True, generator=generator)


class PlainHead(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as in the model

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.lm_head(hidden).float(), target)


class AdaptiveHead(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, cutoffs: list[int], div_val: int) -> None:
        super().__init__()
        self.embed = AdaptiveEmbedding(vocab_size, hidden_size, cutoffs, div_val)
        self.lm_head = ProjectedAdaptiveLogSoftmax(vocab_size, hidden_size, cutoffs, div_val)
        for i, proj in enumerate(self.lm_head.out_projs):  # tied, as in the model
            self.lm_head.out_layers[i].weight = self.embed.emb_layers[i].weight
            if isinstance(proj, nn.Linear):
                proj.weight = self.embed.emb_projs[i].weight

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lm_head.nll(hidden, target).mean()


def init_like_the_model(head: nn.Module, std: float) -> None:
    """Weights ~ N(0, initializer_range), biases 0, as ``DEQTransformerPreTrainedModel._init_weights`` does (with
    N(0, 1) embeddings the logits of unit-variance hidden states saturate the softmax into denormal floats,
    which makes CPU matmuls many times slower and says nothing about training)."""
    with torch.no_grad():
        for name, param in head.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, std)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) tensors are listed once


def peak_bytes(device: torch.device, fn) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage  # self: a parent op would count its children again
        peak = max(peak, current)
    return peak


def measure(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor, repeats: int) -> tuple[float, int]:
    device = hidden.device

    def step() -> None:
        head.zero_grad(set_to_none=True)
        h = hidden.detach().requires_grad_()
        head.loss(h, target).backward()

    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_bytes(device, step)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Measure both heads with the flags of ``argv`` and print the table; returns its rows."""
    flags = parse_args(argv)
    if flags.device == "cpu" and flags.torch_num_threads:
        torch.set_num_threads(flags.torch_num_threads)
    device = torch.device(flags.device)
    config = hf_deq.create_config(flags.preset)
    vocab, hidden_size = config.vocab_size, config.hidden_size
    torch.manual_seed(0)
    heads = {
        "plain tied embedding": PlainHead(vocab, hidden_size),
        f"adaptive (cutoffs {config.adaptive_cutoffs}, div_val {config.adaptive_div_val})": AdaptiveHead(
            vocab, hidden_size, config.adaptive_cutoffs, config.adaptive_div_val
        ),
    }
    for head in heads.values():
        init_like_the_model(head, config.initializer_range)
    generator = torch.Generator().manual_seed(0)
    tokens = flags.batch * flags.seq_len
    hidden = torch.randn(tokens, hidden_size, generator=generator).to(device)
    target = zipf_targets(vocab, tokens, generator).to(device)
    rows = {}
    for name, head in heads.items():
        head.to(device)
        seconds, peak = measure(head, hidden, target, flags.repeats)
        rows[name] = {"parameters": count(head), "seconds": seconds, "peak_mib": peak / 2**20}
        head.cpu()
    print(
        f"LM head of {flags.preset}: vocabulary {vocab:,}, hidden {hidden_size}, {tokens} target tokens "
        f"({flags.batch} x {flags.seq_len}), {device.type}\n"
    )
    print("| head | parameters | loss + backward (ms) | peak memory (MiB) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['parameters']:,} | {1000 * r['seconds']:.1f} | {r['peak_mib']:.0f} |")
    plain, adaptive = rows.values()
    print(
        f"\nadaptive / plain: parameters {adaptive['parameters'] / plain['parameters']:.2f}x, "
        f"time {adaptive['seconds'] / plain['seconds']:.2f}x, peak memory {adaptive['peak_mib'] / plain['peak_mib']:.2f}x"
    )
    return rows


if __name__ == "__main__":
    main()
