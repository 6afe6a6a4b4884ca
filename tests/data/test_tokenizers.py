"""Tokenizers trained by ``hf_deq.data.tokenizers`` (what ``train_deq_lm.py --train_tokenizer`` uses)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from hf_deq.data.tokenizers import TOKENIZER_KINDS, train_tokenizer, train_word_tokenizer

TEXT = ["the cat sat on the mat\n", "the dog sat\n", "a cat\n"]


def test_word_tokenizer_orders_words_by_frequency_after_the_specials():
    tok = train_word_tokenizer(TEXT)
    vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    # counts: '\n' 3, the 3, cat 2, sat 2, then the words seen once, ties in alphabetical order
    assert [w for w, _ in vocab] == [
        "<unk>", "<pad>", "<|endoftext|>", "\n", "the", "cat", "sat", "a", "dog", "mat", "on",
    ]  # fmt: skip
    ids = tok("the bird sat\n", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["the", "<unk>", "sat", "\n"]
    assert tok.decode(tok("the cat", add_special_tokens=False)["input_ids"]) == "the cat"


def test_word_tokenizer_vocab_size_keeps_the_most_frequent_words(tmp_path):
    tok = train_tokenizer("word", TEXT, vocab_size=6)
    assert len(tok) == 6 and "cat" in tok.get_vocab() and "dog" not in tok.get_vocab()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    sample = "the dog sat on a mat\n"
    assert again(sample)["input_ids"] == tok(sample)["input_ids"]
    with pytest.raises(ValueError, match="a word vocabulary needs more than 3 tokens, got vocab_size=3"):
        train_word_tokenizer(TEXT, vocab_size=3)


def test_train_tokenizer_kinds():
    assert TOKENIZER_KINDS == ("char", "word", "bpe")
    assert len(train_tokenizer("char", TEXT)) == 3 + len(set("".join(TEXT)))
    with pytest.raises(ValueError, match=r"unknown tokenizer kind 'wordpiece'; expected one of \['char'"):
        train_tokenizer("wordpiece", TEXT)
