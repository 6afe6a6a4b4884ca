"""Language-model data: raw text datasets (a Hub dataset, local text files, or a built-in corpus that needs no
download), tokenising, cutting into blocks, and the split of a single text into training and validation."""

from __future__ import annotations

import os
from typing import Any

from .images import local_name

#: name of the built-in corpus: English text that ships with Python (``pydoc_data.topics``)
BUILTIN_CORPUS = "pydoc_topics"


def builtin_corpus() -> list[str]:
    """English text that ships with Python (``pydoc_data.topics``, ~65k words), as lines with their line breaks."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    return text.splitlines(keepends=True)


def tail_split_index(lengths, tail_fraction: float) -> int:
    """Index of the first row of the last ``tail_fraction`` of the text (by characters): rows before it are
    the head (training), rows from it on the tail (validation)."""
    if not 0 < tail_fraction < 1:
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction!r}")
    lengths = list(lengths)
    target = (1.0 - tail_fraction) * sum(lengths)
    seen = 0
    for i, n in enumerate(lengths):
        if seen >= target:
            return max(i, 1)
        seen += n
    return max(len(lengths) - 1, 1)


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """``datasets.map(batched=True)`` helper: concatenate the token lists of a batch and cut them into blocks of
    ``block_size`` (the remainder of the batch is dropped); ``labels`` are a copy of ``input_ids``."""
    keys = [k for k in examples if k in ("input_ids", "attention_mask")]
    concatenated = {k: [t for row in examples[k] for t in row] for k in keys}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    result = {
        k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in concatenated.items()
    }
    result["labels"] = [list(block) for block in result["input_ids"]]
    return result


def load_text_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column_name: str = "text",
    validation_split_percentage: float = 10.0,
):
    """A ``DatasetDict`` with ``train`` and ``validation`` text splits: ``load_dataset(dataset_name, ...)``, local
    text files (one example per line), or the built-in corpus. Without a validation split the last
    ``validation_split_percentage`` percent of the training text (by characters, in order) are the validation
    set, so that validation text follows the training text."""
    from datasets import Dataset, DatasetDict, load_dataset

    if dataset_name is not None:
        raw = load_dataset(dataset_name, dataset_config_name)
    elif train_file is not None:
        files = {"train": train_file}
        if validation_file is not None:
            files["validation"] = validation_file
        raw = load_dataset("text", data_files=files, keep_linebreaks=True)
    else:
        raw = DatasetDict({"train": Dataset.from_dict({"text": builtin_corpus()})})
    if text_column_name not in raw["train"].column_names:
        raise ValueError(
            f"--text_column_name {text_column_name!r} is not a column of the dataset ({raw['train'].column_names})"
        )
    if "validation" not in raw:
        train = raw["train"]
        lengths = [len(t) for t in train[text_column_name]]
        split = tail_split_index(lengths, validation_split_percentage / 100)
        raw = DatasetDict(
            {"train": train.select(range(split)), "validation": train.select(range(split, len(train)))}
        )
    return raw


def tokenize_into_blocks(
    raw,
    tokenizer,
    block_size: int,
    text_column_name: str = "text",
    num_proc: int | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> tuple[Any, Any]:
    """``(train, validation)`` datasets of ``block_size``-token blocks (``labels`` = ``input_ids``: the model
    shifts them)."""

    def tokenize(examples):
        return tokenizer(examples[text_column_name], add_special_tokens=False, return_attention_mask=False)

    tokenized = raw.map(
        tokenize, batched=True, num_proc=num_proc, remove_columns=raw["train"].column_names, desc="tokenizing"
    )
    blocks = tokenized.map(
        group_texts,
        batched=True,
        batch_size=10000,
        fn_kwargs={"block_size": block_size},
        num_proc=num_proc,
        desc=f"grouping into blocks of {block_size}",
    )
    train, validation = blocks["train"], blocks["validation"]
    if max_train_samples is not None:
        train = train.select(range(min(len(train), max_train_samples)))
    if max_eval_samples is not None:
        validation = validation.select(range(min(len(validation), max_eval_samples)))
    if len(train) == 0 or len(validation) == 0:
        raise ValueError(
            f"not enough text for one block of {block_size} tokens in each split (train {len(train)} blocks, "
            f"validation {len(validation)} blocks); lower --block_size"
        )
    return train, validation


def text_dataset_name(dataset_name: str | None, train_file: str | os.PathLike | None) -> str:
    """What a run trained on, for its results and model card: a Hub id, a local file's base name, or the
    built-in corpus's name."""
    if dataset_name is not None:
        return local_name(dataset_name)
    if train_file is not None:
        return os.path.basename(os.fspath(train_file))
    return BUILTIN_CORPUS


__all__ = [
    "BUILTIN_CORPUS",
    "builtin_corpus",
    "group_texts",
    "load_text_datasets",
    "tail_split_index",
    "text_dataset_name",
    "tokenize_into_blocks",
]
