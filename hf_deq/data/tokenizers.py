"""Tokenizers trained with ``tokenizers`` on the training text and wrapped as ``PreTrainedTokenizerFast`` (saved
next to a model, reloaded by ``AutoTokenizer``): character, word (Transformer-XL style) and byte-level BPE.
Independent of any model family."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

from .errors import InputError, shown_path

UNK_TOKEN = "<unk>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
TOKENIZER_KINDS = ("char", "word", "bpe")
#: what the word tokenizer counts: runs of non-space characters, and each line break
_WORD_OR_NEWLINE = re.compile(r"[^\s]+|\n")


def train_char_tokenizer(texts: Iterable[str]):
    """A character-level tokenizer over the characters of ``texts`` (plus ``<unk>``, ``<pad>`` and
    ``<|endoftext|>``); decoding concatenates characters, so ``decode(encode(s)) == s`` for seen characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    specials = [UNK_TOKEN, PAD_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return _wrap(tokenizer)


def train_word_tokenizer(texts: Iterable[str], vocab_size: int | None = None):
    """A word-level tokenizer (Transformer-XL / DEQ-Transformer WikiText-103 style): tokens are the
    whitespace-separated words and each line break (the end-of-line token), ids sorted by descending training
    frequency after ``<unk>``, ``<pad>`` and ``<|endoftext|>``, so that an adaptive embedding / softmax
    (``adaptive_cutoffs``) puts the frequent words in its head. ``vocab_size`` keeps only the most frequent
    words (the rest become ``<unk>``); ``None`` keeps every word. Decoding joins the words with spaces."""
    from collections import Counter

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    counts: Counter[str] = Counter()
    for batch in _batched(texts):
        for text in batch:
            counts.update(_WORD_OR_NEWLINE.findall(text))
    specials = [UNK_TOKEN, PAD_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials)}
    limit = None if vocab_size is None else vocab_size - len(specials)
    if limit is not None and limit < 1:
        raise InputError(
            "tokenizer_vocab_size",
            vocab_size,
            f"a word vocabulary needs more than {len(specials)} tokens, got vocab_size={vocab_size}",
        )
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # The same split as the counting above, in the tokenizer itself (kept: the matches; dropped: the rest).
    tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(_WORD_OR_NEWLINE.pattern), behavior="removed", invert=True
    )
    return _wrap(tokenizer)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise InputError(
            "tokenizer_vocab_size",
            vocab_size,
            f"a byte-level BPE vocabulary needs at least 300 tokens, got vocab_size={vocab_size}",
        )
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_batched(texts), trainer=trainer)
    return _wrap(tokenizer, unk=False)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int | None = None):
    """``kind`` is ``"char"``, ``"word"`` or ``"bpe"``; ``vocab_size`` bounds ``word`` (default: every word) and
    ``bpe`` (default 8000), and is ignored by ``char``."""
    if kind == "char":
        return train_char_tokenizer(texts)
    if kind == "word":
        return train_word_tokenizer(texts, vocab_size=vocab_size)
    if kind == "bpe":
        return train_bpe_tokenizer(texts, vocab_size=8000 if vocab_size is None else vocab_size)
    raise InputError(
        "train_tokenizer", kind, f"unknown tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}"
    )


def missing_tokenizer_folder(path: str | os.PathLike) -> str | None:
    """Why ``path``, meant as a local folder, cannot hold a saved tokenizer (it does not exist, or is a file),
    said before any data loads; ``None`` for a folder (``load_saved_tokenizer`` reads it)."""
    shown = shown_path(path)
    folder = os.path.expanduser(os.fspath(path))
    if not os.path.exists(folder):
        return f"{shown}: no such folder (a local path, not a Hub id)"
    if not os.path.isdir(folder):
        return f"{shown} is a file; expected the folder a tokenizer was saved to (save_pretrained)"
    return None


def load_saved_tokenizer(name_or_path: str | os.PathLike, argument: str = "tokenizer_name"):
    """``AutoTokenizer.from_pretrained(name_or_path)``: a folder or Hub id it cannot load (``OSError``,
    ``ValueError``) is an ``InputError`` of ``argument`` with the cause."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            argument, name_or_path, f"cannot load a tokenizer from {shown_path(name_or_path)}: {cause}"
        ) from err


def _wrap(tokenizer, unk: bool = True):
    from transformers import PreTrainedTokenizerFast

    kwargs = {"unk_token": UNK_TOKEN} if unk else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TOKENIZER_KINDS",
    "UNK_TOKEN",
    "load_saved_tokenizer",
    "missing_tokenizer_folder",
    "train_bpe_tokenizer",
    "train_word_tokenizer",
    "train_char_tokenizer",
    "train_tokenizer",
]
