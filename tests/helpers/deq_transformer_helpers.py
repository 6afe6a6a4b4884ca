"""Pieces shared by the DEQ-Transformer tests (plain and adaptive embeddings)."""

from __future__ import annotations

import torch
from deq_model_tester import DEQModelTesterMixin
from transformers import AutoModel, AutoModelForCausalLM, DataCollatorForLanguageModeling

import hf_deq
from hf_deq import DEQTransformerConfig, DEQTransformerForCausalLM, DEQTransformerModel
from hf_deq.data.tokenizers import train_char_tokenizer

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n"
)


def random_ids(config, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def train_tiny_char_model(preset: str, steps: int):
    """``(model, tokenizer)``: a tiny model of ``preset`` trained for ``steps`` Adam steps on ``TEXT`` with a char
    tokenizer (random tiny models repeat one token), then set to eval with a tight Anderson solve, so that cached
    and uncached generation reach the same equilibria."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = train_char_tokenizer([TEXT])
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    config = hf_deq.create_config(
        preset,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        solver_on_failure="ignore",
    )
    torch.manual_seed(0)
    model = DEQTransformerForCausalLM(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 24, (8,), generator=generator)
        batch = torch.stack([ids[s : s + 24] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.set_solver("anderson", solver_tol=1e-7, solver_max_iter=100, solver_on_failure="warn")
    torch.set_num_threads(threads)
    return model, tokenizer


class DEQTransformerTesterBase(DEQModelTesterMixin):
    """The shared model checks for a DEQ-Transformer preset (``preset``); inputs are random token ids with
    labels, the Trainer dataset is ``TEXT`` through a char tokenizer."""

    config_class = DEQTransformerConfig
    base_model_class = DEQTransformerModel
    auto_classes = {DEQTransformerModel: AutoModel, DEQTransformerForCausalLM: AutoModelForCausalLM}
    preset: str

    def get_config(self, **overrides):
        return hf_deq.create_config(self.preset, **overrides)

    def get_inputs(self, config, batch_size: int = 2, with_labels: bool = True):
        ids = random_ids(config, batch_size, 8)
        return {"input_ids": ids, "labels": ids.clone()} if with_labels else {"input_ids": ids}

    def get_train_dataset(self, config):
        from datasets import Dataset

        tokenizer = train_char_tokenizer([TEXT])
        assert len(tokenizer) <= config.vocab_size
        lines = [line for line in TEXT.splitlines() if line]
        dataset = Dataset.from_dict(tokenizer(lines, return_attention_mask=False).data)
        return dataset, DataCollatorForLanguageModeling(tokenizer, mlm=False)
