"""Language-model data: raw text datasets (a Hub dataset, local text files, or a built-in corpus that needs no
download), tokenising, cutting into blocks, and the split of a single text into training and validation."""

from __future__ import annotations

import codecs
import os
from typing import Any

from .errors import InputError, loading_dataset, shown_path
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


def check_text_file(
    path: str | os.PathLike, argument: str = "train_file", contents: bool = True, chunk_size: int = 1 << 20
) -> None:
    """Raise ``InputError`` unless ``path`` is a non-empty UTF-8 text file: missing, a folder, empty, binary (a NUL
    byte) or not UTF-8 (e.g. latin-1) each name the file and, for the content, the byte offset. ``contents=False``
    checks only that it is a file; else it reads the file once, in chunks."""
    shown = shown_path(path)
    if not os.path.exists(path):
        raise InputError(argument, shown, f"{shown}: no such file")
    if os.path.isdir(path):
        raise InputError(argument, shown, f"{shown} is a folder; expected a UTF-8 text file")
    if not contents:
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            if (nul := chunk.find(b"\x00")) >= 0:
                raise InputError(
                    argument,
                    shown,
                    f"{shown} is binary (a NUL byte at byte offset {offset + nul}); expected UTF-8 text",
                )
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                where = offset - pending + err.start
                bad = err.object[err.start : err.start + 1].hex()
                raise InputError(
                    argument,
                    shown,
                    f"{shown} is not UTF-8 text (byte 0x{bad} at byte offset {where}); convert it, e.g. "
                    f"`iconv -f latin1 -t utf-8 {shown}`",
                ) from None
            offset += len(chunk)
    if offset == 0:
        raise InputError(argument, shown, f"{shown} is empty; expected UTF-8 text")
    if pending := decoder.getstate()[0]:
        raise InputError(
            argument,
            shown,
            f"{shown} is not UTF-8 text (it ends inside a character at byte offset {offset - len(pending)})",
        )


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
        with loading_dataset("dataset_name", dataset_name):
            raw = load_dataset(dataset_name, dataset_config_name)
    elif train_file is not None:
        files = {"train": train_file}
        check_text_file(train_file, "train_file")
        if validation_file is not None:
            check_text_file(validation_file, "validation_file")
            files["validation"] = validation_file
        raw = load_dataset("text", data_files=files, keep_linebreaks=True)
    else:
        raw = DatasetDict({"train": Dataset.from_dict({"text": builtin_corpus()})})
    if "train" not in raw:
        raise InputError(
            "dataset_name", dataset_name, f"{dataset_name} has no 'train' split (splits: {list(raw)})"
        )
    if text_column_name not in raw["train"].column_names:
        raise InputError(
            "text_column_name",
            text_column_name,
            f"{text_column_name!r} is not a column of the dataset; its columns: {raw['train'].column_names}",
        )
    if "validation" not in raw:
        train = raw["train"]
        if len(train) < 2:
            source = ("train_file", train_file) if train_file is not None else ("dataset_name", dataset_name)
            raise InputError(
                *source,
                f"{source[1]} holds {len(train)} line(s): too little text for a train/validation split (the last "
                f"{validation_split_percentage:g}% of the lines are the validation set); give more text or a "
                "--validation_file",
            )
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
        raise InputError(
            "block_size",
            block_size,
            f"too little text for one block of {block_size} tokens in each split (train {len(train)} blocks, "
            f"validation {len(validation)} blocks): lower --block_size or give more text",
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
    "check_text_file",
    "group_texts",
    "load_text_datasets",
    "tail_split_index",
    "text_dataset_name",
    "tokenize_into_blocks",
]
