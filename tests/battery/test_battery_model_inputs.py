"""Battery (d): hostile inputs to both tiny presets' forward (non-finite pixels or embeddings, wrong dtypes and
shapes, empty batches, out-of-vocabulary token ids, out-of-range or malformed labels and masks). The only right
outcomes: a ``ValueError`` naming the input, or a correct result (finite logits of the right shape, a finite
loss when labels are given)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from battery_probe import BATTERY, INF, NAN, case, record, timed
from hypothesis import given
from hypothesis import strategies as st

import hf_deq

MDEQ_ENTRY, LM_ENTRY = "MDEQ inputs (test_mdeq_tiny)", "LM inputs (test_deq_transformer_tiny)"
VOCAB, POSITIONS, HIDDEN, LABELS = 99, 64, 32, 10
INDEX_DTYPES = [
    torch.float32,
    torch.float64,
    torch.bool,
    torch.int16,
    torch.uint8,
    torch.int32,
    torch.complex64,
]
FLOAT_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


@functools.cache
def _model(preset: str):
    torch.manual_seed(0)
    return hf_deq.create_model(preset, solver_on_failure="ignore").eval()


def _pixels(batch: int = 2, side: int = 8) -> torch.Tensor:
    return torch.randn(batch, 1, side, side, generator=torch.Generator().manual_seed(0))


def _ids(batch: int = 2, length: int = 6) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))


# -- hostile inputs: kind -> strategy of (input name, forward keywords) ---------------------------------------------
def _with(tensor: torch.Tensor, where: tuple, value) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[where] = value
    return tensor


MDEQ_INPUTS: dict[str, st.SearchStrategy] = {
    "nan pixels": st.tuples(st.integers(0, 1), st.integers(0, 7), st.integers(0, 7)).map(
        lambda i: ("pixel_values", {"pixel_values": _with(_pixels(), (i[0], 0, i[1], i[2]), NAN)})
    ),
    "inf pixels": st.tuples(st.sampled_from([INF, -INF]), st.integers(0, 7)).map(
        lambda v: ("pixel_values", {"pixel_values": _with(_pixels(), (1, 0, v[1], 3), v[0])})
    ),
    "pixel dtype": st.sampled_from(FLOAT_DTYPES).map(
        lambda d: ("pixel_values", {"pixel_values": _pixels().to(d)})
    ),
    "pixel shape": st.lists(st.integers(0, 9), min_size=0, max_size=5).map(
        lambda s: ("pixel_values", {"pixel_values": torch.zeros(s)})
    ),
    "empty batch": st.integers(1, 9).map(lambda side: ("pixel_values", {"pixel_values": _pixels(0, side)})),
    "label range": st.sampled_from([LABELS, 10**12, -1, -100, -(10**12), 2**62]).map(
        lambda v: ("labels", {"pixel_values": _pixels(), "labels": torch.tensor([1, v])})
    ),
    "label dtype": st.sampled_from([torch.float32, torch.bool, torch.float64, torch.uint8]).map(
        lambda d: ("labels", {"pixel_values": _pixels(), "labels": torch.tensor([1, 2]).to(d)})
    ),
    "label shape": st.lists(st.integers(0, 3), min_size=0, max_size=3)
    .filter(lambda s: s != [2])
    .map(lambda s: ("labels", {"pixel_values": _pixels(), "labels": torch.zeros(s, dtype=torch.long)})),
}

LM_INPUTS: dict[str, st.SearchStrategy] = {
    "token range": st.tuples(
        st.sampled_from([VOCAB, VOCAB + 1, 10**12, -1, -(10**12), 2**62]), st.integers(0, 5)
    ).map(lambda v: ("input_ids", {"input_ids": _with(_ids(), (1, v[1]), v[0])})),
    "token dtype": st.sampled_from(INDEX_DTYPES).map(lambda d: ("input_ids", {"input_ids": _ids().to(d)})),
    "token shape": st.lists(st.integers(0, 6), min_size=0, max_size=4)
    .filter(lambda s: len(s) != 2)
    .map(lambda s: ("input_ids", {"input_ids": torch.zeros(s, dtype=torch.long)})),
    "empty batch": st.sampled_from([(0, 6), (2, 0), (0, 0)]).map(
        lambda s: ("input_ids", {"input_ids": torch.zeros(s, dtype=torch.long)})
    ),
    "too long": st.integers(POSITIONS + 1, POSITIONS + 40).map(
        lambda n: ("input_ids", {"input_ids": torch.zeros(1, n, dtype=torch.long)})
    ),
    "label range": st.sampled_from([VOCAB, 10**12, -1, -(10**12), -101]).map(
        lambda v: ("labels", {"input_ids": _ids(), "labels": _with(_ids(), (0, 3), v)})
    ),
    "label shape": st.tuples(st.integers(1, 3), st.integers(1, 8))
    .filter(lambda s: s != (2, 6))
    .map(lambda s: ("labels", {"input_ids": _ids(), "labels": torch.zeros(s, dtype=torch.long)})),
    "attention mask": st.sampled_from(["shape", "nan", "two", "float", "empty"]).map(
        lambda m: ("attention_mask", {"input_ids": _ids(), "attention_mask": _mask(m)})
    ),
    "nan embeddings": st.tuples(st.sampled_from([NAN, INF, -INF]), st.integers(0, 5)).map(
        lambda v: ("inputs_embeds", {"inputs_embeds": _with(torch.randn(2, 6, HIDDEN), (0, v[1], 0), v[0])})
    ),
    "embedding shape": st.lists(st.integers(0, 40), min_size=1, max_size=4)
    .filter(lambda s: len(s) != 3 or s[-1] != HIDDEN or 0 in s)
    .map(lambda s: ("inputs_embeds", {"inputs_embeds": torch.zeros(s)})),
}


def _mask(kind: str) -> torch.Tensor:
    return {
        "shape": torch.ones(2, 5),
        "nan": torch.full((2, 6), NAN),
        "two": torch.full((2, 6), 2, dtype=torch.long),
        "float": torch.full((2, 6), 0.5),
        "empty": torch.ones(0, 6),
    }[kind]


def _check(entry: str, kind: str, name: str, inputs: dict, run: Callable, expected_shape: Callable) -> None:
    shown = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in inputs.items()}
    result, err, seconds = timed(run)
    if err is None:
        logits, loss = result.logits, result.loss
        problem = ""
        if tuple(logits.shape) != expected_shape(inputs):
            problem = f"logits of shape {tuple(logits.shape)}"
        elif not torch.isfinite(logits).all():
            problem = "non-finite logits"
        elif "labels" in inputs and (loss is None or not torch.isfinite(loss)):
            problem = f"loss {loss}"
        record(entry, name, kind, shown, "failed" if problem else "handled", problem)
    elif isinstance(err, ValueError) and (
        name in str(err) or (kind == "too long" and "sequence length" in str(err))
    ):
        record(entry, name, kind, shown, "refused", str(err))
    else:
        record(entry, name, kind, shown, "failed", f"{type(err).__name__} after {seconds:.1f} s: {err}")


@pytest.mark.parametrize("name, kind", [case(MDEQ_ENTRY, "inputs", kind) for kind in MDEQ_INPUTS])
@BATTERY
@given(data=st.data())
def test_mdeq_input(name, kind, data):
    input_name, inputs = data.draw(MDEQ_INPUTS[kind], label=kind)
    model = _model("test_mdeq_tiny")

    def run():
        with torch.no_grad():
            return model(**inputs)

    _check(MDEQ_ENTRY, kind, input_name, inputs, run, lambda i: (i["pixel_values"].shape[0], LABELS))


@pytest.mark.parametrize("name, kind", [case(LM_ENTRY, "inputs", kind) for kind in LM_INPUTS])
@BATTERY
@given(data=st.data())
def test_lm_input(name, kind, data):
    input_name, inputs = data.draw(LM_INPUTS[kind], label=kind)
    model = _model("test_deq_transformer_tiny")

    def run():
        with torch.no_grad():
            return model(**inputs)

    def shape(i):
        source = i.get("input_ids", i.get("inputs_embeds"))
        return (*source.shape[:2], VOCAB)

    _check(LM_ENTRY, kind, input_name, inputs, run, shape)
