"""The DEQ-Transformer's next-token losses: transformers' ``ForCausalLMLoss`` (float64 kept in float64) and the
adaptive-softmax loss computed without the full logits, with one check of the labels."""

from __future__ import annotations

import torch
from transformers.loss.loss_utils import ForCausalLMLoss, fixed_cross_entropy

from .adaptive_softmax import ProjectedAdaptiveLogSoftmax


def check_lm_labels(labels: torch.Tensor, shape: tuple[int, ...], vocab_size: int, name="labels") -> None:
    if labels.shape != shape:
        raise ValueError(
            f"{name} must have shape (batch, seq_len) = {tuple(shape)} (with logits_to_keep=0), got "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name} must be integer token ids (torch.long), got dtype {labels.dtype}")
    if name == "labels" and labels.shape[1] < 2:
        raise ValueError("labels need seq_len >= 2: a sequence of one token has no next token to predict")
    bad = labels[((labels < 0) | (labels >= vocab_size)) & (labels != -100)]
    if bad.numel():
        raise ValueError(
            f"{name} contain token id {int(bad[0])}, outside the vocabulary [0, {vocab_size}); use -100 to ignore "
            "a position"
        )


def _next_token_pairs(inputs: torch.Tensor, labels, shift_labels, vocab_size: int):
    """``(inputs, targets)`` flattened position by position: ``inputs[:, t]`` predicts ``labels[:, t + 1]``, or
    ``shift_labels[:, t]``, targets the caller already shifted (sequence/context-parallel training shards them)."""
    if shift_labels is not None:
        check_lm_labels(shift_labels, inputs.shape[:2], vocab_size, name="shift_labels")
        return inputs.reshape(-1, inputs.shape[-1]), shift_labels.to(inputs.device).reshape(-1)
    check_lm_labels(labels, inputs.shape[:2], vocab_size)
    return inputs[:, :-1].reshape(-1, inputs.shape[-1]), labels[:, 1:].to(inputs.device).reshape(-1)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Next-token cross entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]`` (or ``shift_labels[:, t]``, which
    replace ``labels`` when given); ``ignore_index`` labels are ignored; with ``num_items_in_batch`` (``Trainer``
    with gradient accumulation) the sum is divided by it.

    This is transformers' ``ForCausalLMLoss`` (``model.loss_function`` of transformers' causal LMs), computed in
    float32 at least; float64 logits keep a float64 loss, which ``ForCausalLMLoss`` would compute in float32."""
    if logits.dtype != torch.float64:
        return ForCausalLMLoss(
            logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels=shift_labels, **kwargs
        )
    shift_logits, targets = _next_token_pairs(logits, labels, shift_labels, vocab_size)
    return fixed_cross_entropy(shift_logits, targets, num_items_in_batch, ignore_index)


def adaptive_causal_lm_loss(
    head: ProjectedAdaptiveLogSoftmax,
    hidden_states: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``causal_lm_loss`` of the log-probabilities ``head.log_prob(hidden_states)``, computed without them (the
    head softmax at every position, a tail cluster only where the next token is in it): the mean negative
    log-likelihood over the positions whose label is not ``-100`` (NaN when there is none, like
    ``F.cross_entropy``), or the sum divided by ``num_items_in_batch``."""
    shift_hidden, shift_labels = _next_token_pairs(hidden_states, labels, shift_labels, head.vocab_size)
    total = head.nll(shift_hidden, shift_labels, ignore_index=-100).sum()
    if num_items_in_batch is None:
        return total / (shift_labels != -100).sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


__all__ = ["adaptive_causal_lm_loss", "causal_lm_loss", "check_lm_labels"]
