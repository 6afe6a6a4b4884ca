"""Inference cost per token of a saved DEQ language model beside the explicit GPT of ``explicit_models`` (same
vocabulary and block size, random weights: its cost does not depend on them), on the validation blocks of a text
file, at one or more evaluation budgets (``solver_eval_max_iter``).

    python -m benchmarks.inference_cost --model_name_or_path runs/ts \\
        --train_file ../shared/data/tinyshakespeare/input.txt --budgets 10,15,30

One thread by default; the validation blocks are the last ``--validation_split_percentage`` of the text, as the
training script splits it (``hf_deq.data.text.tail_split_index`` on the lines)."""

from __future__ import annotations

import time
from dataclasses import MISSING, dataclass
from pathlib import Path

import torch

from hf_deq.training.flags import FlagParser, flag

from .flags import split_commas


@dataclass(frozen=True)
class InferenceCostFlags:
    """The flags of ``python -m benchmarks.inference_cost``."""

    model_name_or_path: str = flag(MISSING, "a saved DEQ language model")
    train_file: str = flag(MISSING, "the text the model was trained on")
    block_size: int = flag(64, "tokens per block")
    validation_split_percentage: float = flag(10.0, "percent of the text's lines")
    max_blocks: int | None = flag(None, "at most this many validation blocks")
    batch_size: int = flag(64, "blocks per forward")
    budgets: str | None = flag(None, "comma-separated solver_eval_max_iter", unset_default="the saved one")
    torch_num_threads: int = flag(1, "intra-op threads")

    @property
    def budget_list(self) -> list[int] | None:
        """The evaluation budgets of ``--budgets`` (``None``: the saved one)."""
        return eval_budgets(self.budgets)


def eval_budgets(text: str | None) -> list[int] | None:
    """``"10,15"`` -> ``[10, 15]`` (``None`` stays ``None``); ``ValueError`` for a part that is not an integer."""
    return None if text is None else [int(b) for b in split_commas(text)]


def parse_args(argv: list[str] | None = None) -> InferenceCostFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(InferenceCostFlags, description=__doc__.split("\n\n")[0])
    (flags,) = parser.parse_into_dataclasses(argv)
    try:
        eval_budgets(flags.budgets)
    except ValueError:
        parser.error(f"argument --budgets: expected comma-separated integers, got {flags.budgets!r}")
    return flags


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
    """Time the explicit GPT and the DEQ at every budget, print the table; returns its rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_deq  # noqa: F401  (registers the DEQ classes)

    from .explicit_models import explicit_gpt2

    flags = parse_args(argv)
    torch.set_num_threads(flags.torch_num_threads)
    tokenizer = AutoTokenizer.from_pretrained(flags.model_name_or_path)
    deq = AutoModelForCausalLM.from_pretrained(flags.model_name_or_path, solver_on_failure="ignore")
    blocks = validation_blocks(
        tokenizer, flags.train_file, flags.block_size, flags.validation_split_percentage, flags.max_blocks
    )
    torch.manual_seed(0)
    gpt = explicit_gpt2(tokenizer, flags.block_size)
    gpt_cost, _ = seconds_per_token(gpt, blocks, flags.batch_size)
    rows = [
        {"model": "explicit GPT-2 (4 x 128, random weights)", "budget": None, "us_per_token": 1e6 * gpt_cost}
    ]
    budgets = flags.budget_list or [deq.config.solver_eval_max_iter]
    for budget in budgets:
        deq.config.solver_eval_max_iter = budget
        cost, loss = seconds_per_token(deq, blocks, flags.batch_size)
        rows.append({"model": "DEQ", "budget": budget, "us_per_token": 1e6 * cost, "loss": loss})
    print(
        f"{len(blocks)} validation blocks of {flags.block_size} tokens, batch {flags.batch_size}, "
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
