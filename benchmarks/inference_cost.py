"""Inference cost per token of a saved DEQ language model beside the explicit GPT of ``explicit_models`` (same
vocabulary and block size, random weights: its cost does not depend on them), on the validation blocks of a text
file, at one or more evaluation budgets (``solver_eval_max_iter``).

    python -m benchmarks.inference_cost --model_name_or_path runs/ts \\
        --train_file ../shared/data/tinyshakespeare/input.txt --budgets 10,15,30

One thread by default; the validation blocks are the last ``--validation_split_percentage`` of the text, as the
training script splits it (``hf_deq.data.text.tail_split_index`` on the lines)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


@torch.no_grad()
def seconds_per_token(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """``(seconds per token, mean loss)`` of no-grad forwards with labels over ``blocks`` (rows of token ids), in
    batches of ``batch_size``; the loss checks that the model is the trained one."""
    model.eval()
    start, losses = time.perf_counter(), []
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size]
        losses.append(float(model(input_ids=batch, labels=batch).loss) * len(batch))
    return (time.perf_counter() - start) / blocks.numel(), sum(losses) / len(blocks)


def validation_blocks(
    tokenizer, text_file: str | Path, block_size: int, percentage: float, limit: int | None
):
    """The validation blocks of ``text_file`` as the training script cuts them (its last ``percentage`` percent
    of lines, concatenated, cut into ``block_size`` tokens), at most ``limit``."""
    from hf_deq.data.text import tail_split_index

    lines = Path(text_file).read_text().splitlines(keepends=True)
    tail = "".join(lines[tail_split_index([len(line) for line in lines], percentage / 100) :])
    ids = tokenizer(tail)["input_ids"]
    n = len(ids) // block_size
    if limit is not None:
        n = min(n, limit)
    return torch.tensor(ids[: n * block_size]).view(n, block_size)


def main(argv: list[str] | None = None) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_deq  # noqa: F401  (registers the DEQ classes)

    from .explicit_models import explicit_gpt2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a saved DEQ language model")
    parser.add_argument("--train_file", required=True, help="the text the model was trained on")
    parser.add_argument("--block_size", type=int, default=64, help="tokens per block (default 64)")
    parser.add_argument("--validation_split_percentage", type=float, default=10.0, help="default 10")
    parser.add_argument("--max_blocks", type=int, default=None, help="at most this many validation blocks")
    parser.add_argument("--batch_size", type=int, default=64, help="blocks per forward (default 64)")
    parser.add_argument(
        "--budgets", default=None, help="comma-separated solver_eval_max_iter (default: saved)"
    )
    parser.add_argument("--torch_num_threads", type=int, default=1, help="intra-op threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_num_threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    deq = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, solver_on_failure="ignore")
    blocks = validation_blocks(
        tokenizer, args.train_file, args.block_size, args.validation_split_percentage, args.max_blocks
    )
    torch.manual_seed(0)
    gpt = explicit_gpt2(tokenizer, args.block_size)
    gpt_cost, _ = seconds_per_token(gpt, blocks, args.batch_size)
    rows = [
        {"model": "explicit GPT-2 (4 x 128, random weights)", "budget": None, "us_per_token": 1e6 * gpt_cost}
    ]
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [deq.config.solver_eval_max_iter]
    for budget in budgets:
        deq.config.solver_eval_max_iter = budget
        cost, loss = seconds_per_token(deq, blocks, args.batch_size)
        rows.append({"model": "DEQ", "budget": budget, "us_per_token": 1e6 * cost, "loss": loss})
    print(
        f"{len(blocks)} validation blocks of {args.block_size} tokens, batch {args.batch_size}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print("| model | eval budget | µs per token | x GPT | loss (nats/token) |\n|---|---|---|---|---|")
    for r in rows:
        loss = f"{r['loss']:.4f}" if "loss" in r else "-"
        print(
            f"| {r['model']} | {r['budget'] or '-'} | {r['us_per_token']:.1f} | "
            f"{r['us_per_token'] / rows[0]['us_per_token']:.2f} | {loss} |"
        )
    return rows


if __name__ == "__main__":
    main()
