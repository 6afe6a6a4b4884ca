"""A DEQ-Transformer past its trained context (``config.trained_context_length``).

A model trained on blocks of ``C`` tokens has only seen positions ``0 .. C-1`` and contexts of at most ``C``
tokens; past them its outputs degrade (the ``deq-transformer-char`` recipe, trained on 64-character blocks:
validation loss 1.83 nats/char at positions 0-63, 2.64 at 64-127, 3.48 at 192-255). With
``trained_context_length`` set (training sets it to its block size) the model crops its context as nanoGPT does:
the state of the token at position ``p >= C`` is the last state of the window of the ``C`` tokens ending at ``p``,
solved from position 0. Attention is causal, so the tokens at positions below ``C`` keep the states of the
uncropped forward. The windows of one forward are solved as one batch. A key/value cache (generation) still gets
one entry per token, so that its length stays the sequence length, and keeps the last ``C - 1`` token embeddings
(``cache.deq_context``) from which each later window is rebuilt.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache


def remember_context(cache: Cache, embeds: torch.Tensor, context: int) -> None:
    """Keep the last ``context - 1`` token embeddings that went through ``cache`` (``cache.deq_context``)."""
    previous = getattr(cache, "deq_context", None)
    seen = embeds.detach() if previous is None else torch.cat((previous, embeds.detach()), dim=1)
    cache.deq_context = seen[:, max(0, seen.shape[1] - (context - 1)) :]


def _windows(values: torch.Tensor, context: int) -> torch.Tensor:
    """``(batch, n + context - 1, ...)`` -> the ``n`` windows of ``context`` consecutive entries, as a batch of
    ``batch * n``: ``(batch * n, context, ...)``."""
    windows = values.unfold(1, context, 1)  # (batch, n, ..., context)
    windows = windows.movedim(-1, 2)  # (batch, n, context, ...)
    return windows.reshape(-1, *windows.shape[2:])


def past_context_forward(
    model,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    cache: Cache | None,
    past_length: int,
    use_cache: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
    """``(states, solver_nstep, solver_residual, jacobian_loss)`` of the new tokens ``embeds`` (after
    ``past_length`` cached ones) when the sequence is longer than ``model.config.trained_context_length``: the
    tokens within it are solved as usual, each later one as the last token of its window (module docstring).
    Per sample, the statistics are the worst over its windows."""
    context = model.config.trained_context_length
    batch, length, hidden = embeds.shape
    if model.training:
        raise ValueError(
            f"sequence length {past_length + length} is longer than config.trained_context_length={context}, "
            f"the block size this model was trained on: train on blocks of at most {context} tokens, or set "
            "config.trained_context_length to the new block size (training scripts set it from --block_size)"
        )
    previous = getattr(cache, "deq_context", None) if past_length else None
    if past_length and (previous is None or previous.shape[1] < min(past_length, context - 1)):
        raise ValueError(
            "this key/value cache holds no embeddings of its last tokens (cache.deq_context): it was filled while "
            "config.trained_context_length was unset; run the model again from the first token"
        )
    inside = max(0, context - past_length)  # new tokens still within the trained context
    states, nsteps, residuals = [], [], []
    if inside:
        mask = attention_mask[:, : past_length + inside] if attention_mask is not None else None
        head, result, _ = model._solve_and_cache(
            embeds[:, :inside], mask, position_ids[:, :inside], cache, past_length, use_cache
        )
        states.append(head)
        nsteps.append(result.nstep)
        residuals.append(result.residual.float())

    # Embeddings of positions [past_length - kept, total); the first window starts at `first`.
    seen = embeds if previous is None else torch.cat((previous.to(embeds.dtype), embeds), dim=1)
    kept = seen.shape[1] - length
    first = past_length + inside - context + 1
    windows = _windows(seen[:, first - (past_length - kept) :], context)
    count = length - inside
    window_mask = positions = None
    if attention_mask is not None:
        window_mask = _windows(attention_mask[:, first:], context)
        positions = (window_mask.long().cumsum(-1) - 1).clamp_min(0)  # a left-padded window starts at 0
    else:
        positions = torch.arange(context, device=embeds.device).expand(batch * count, context)
    scratch = DynamicCache(config=model.config) if use_cache else None
    window_states, result, _ = model._solve_and_cache(windows, window_mask, positions, scratch, 0, use_cache)
    last = window_states[:, -1].reshape(batch, count, hidden)
    states.append(last)
    nsteps.append(result.nstep.view(batch, count).amax(1))
    residuals.append(result.residual.float().view(batch, count).amax(1))
    if use_cache:
        layer = scratch.layers[
            0
        ]  # (batch * count, heads, context, head_dim): keep each window's last position
        keys, values = (
            t[:, :, -1].unflatten(0, (batch, count)).transpose(1, 2) for t in (layer.keys, layer.values)
        )
        cache.update(keys, values, 0)
        cache.deq_last_state = (past_length + length, last[:, -1].detach())
        cache.deq_context = seen[:, max(0, seen.shape[1] - (context - 1)) :].detach()
    hidden_states = torch.cat(states, dim=1)
    return hidden_states, torch.stack(nsteps).amax(0), torch.stack(residuals).amax(0), None
