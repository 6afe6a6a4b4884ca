"""Past its trained context (``config.trained_context_length``, set by training from the block size) a
DEQ-Transformer crops as nanoGPT does: each later token's output is that of the window of the trained context
ending at it, in plain forwards and in cached generation; a model saved without the field loads and runs as
before; a training forward longer than the context is refused."""

from __future__ import annotations

import json

import pytest
import torch
from deq_transformer_helpers import random_ids

import hf_deq
from hf_deq import DEQConfigError, DEQTransformerForCausalLM

CONTEXT = 6
TIGHT = {"solver_tol": 1e-11, "solver_max_iter": 200, "solver_on_failure": "ignore"}


def _model(**fields) -> DEQTransformerForCausalLM:
    torch.manual_seed(0)
    config = hf_deq.create_config("test_deq_transformer_tiny", **TIGHT, **fields)
    return DEQTransformerForCausalLM(config).double().eval()


def _cropped_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Position by position, the last logits of the (at most CONTEXT) tokens ending there, each window run alone
    from position 0 without a cache: nanoGPT's crop."""
    with torch.no_grad():
        rows = [
            model(ids[:, max(0, p + 1 - CONTEXT) : p + 1], use_cache=False).logits[:, -1]
            for p in range(ids.shape[1])
        ]
    return torch.stack(rows, dim=1)


def test_a_forward_past_the_trained_context_gives_the_cropped_windows_outputs():
    model = _model(trained_context_length=CONTEXT)
    ids = random_ids(model.config, 2, 15)
    with torch.no_grad():
        out = model(ids, use_cache=False)
    assert bool((out.solver_residual <= 1e-9).all())
    torch.testing.assert_close(out.logits, _cropped_logits(model, ids), rtol=0, atol=1e-8)
    uncropped = _model()  # the same weights without a trained context: positions >= CONTEXT differ
    with torch.no_grad():
        plain = uncropped(ids, use_cache=False).logits
    torch.testing.assert_close(plain[:, :CONTEXT], out.logits[:, :CONTEXT], rtol=0, atol=1e-8)
    assert not torch.allclose(plain[:, CONTEXT:], out.logits[:, CONTEXT:], atol=1e-4)


def test_cached_generation_past_the_trained_context_equals_the_cropped_window():
    model = _model(trained_context_length=CONTEXT)
    ids = random_ids(model.config, 2, 4)
    with torch.no_grad():  # a prompt inside the context, then one token at a time far past it
        out = model(ids)
        cache, logits = out.past_key_values, [out.logits]
        for _ in range(10):
            token = logits[-1][:, -1:].argmax(-1)
            ids = torch.cat((ids, token), dim=1)
            out = model(token, past_key_values=cache)
            cache = out.past_key_values
            logits.append(out.logits)
    assert cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(torch.cat(logits, dim=1), _cropped_logits(model, ids), rtol=0, atol=1e-8)

    # A prompt straddling the context, then generate(): the greedy tokens of the cropped model.
    prompt = random_ids(model.config, 1, CONTEXT + 3, seed=1)
    generated = model.generate(prompt, max_new_tokens=5, do_sample=False)
    expected = prompt
    for _ in range(5):
        token = _cropped_logits(model, expected)[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat((expected, token), dim=1)
    assert torch.equal(generated, expected)


def test_a_model_saved_without_the_field_loads_and_runs_as_before(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("trained_context_length")  # as saved before the field existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = DEQTransformerForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert loaded.config.trained_context_length is None
    ids = random_ids(model.config, 2, 3 * CONTEXT)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-10)


def test_training_past_the_context_is_refused_and_the_field_is_validated():
    model = _model(trained_context_length=CONTEXT).train()
    ids = random_ids(model.config, 2, CONTEXT + 1)
    with pytest.raises(ValueError, match=f"longer than config.trained_context_length={CONTEXT}"):
        model(ids, labels=ids)
    model(ids[:, :CONTEXT], labels=ids[:, :CONTEXT]).loss.backward()  # within it: trains as before
    for bad in (0, 2.5, 10**6):
        with pytest.raises(DEQConfigError, match="trained_context_length"):
            hf_deq.create_config("test_deq_transformer_tiny", trained_context_length=bad)
