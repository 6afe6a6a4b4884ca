"""Output dataclasses of hf_deq models: the usual fields plus per-sample solver statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

#: ``transformers`` renamed the cache field of model outputs from ``past_key_values`` to ``cache`` (after 5.17; the
#: ``ModelOutput`` there maps the old name to ``cache``, so a dataclass field named ``past_key_values`` cannot
#: be set). The outputs below declare the name the installed version reads in ``generate``;
#: ``output.past_key_values`` works on both.
CACHE_FIELD = "cache" if hasattr(ModelOutput, "_replace_old_cache_name") else "past_key_values"


@dataclass
class DEQModelOutput(ModelOutput):
    """Base model output.

    Args:
        last_hidden_state: equilibrium state (for MDEQ the highest-resolution map).
        pooler_output: pooled features, where the model has them.
        hidden_states: for MDEQ, the equilibrium maps of every resolution.
        cache: equilibrium key/value cache (DEQ-Transformer); named ``past_key_values`` before transformers
            renamed it (see ``CACHE_FIELD``).
        solver_nstep: ``(B,)`` solver steps to the returned state.
        solver_residual: ``(B,)`` residual of the returned state under the configured stop rule.
        jacobian_loss: Jacobian regularisation term (training with ``jacobian_reg_weight > 0``).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    if CACHE_FIELD == "cache":
        cache: object | None = None
    else:
        past_key_values: object | None = None
    solver_nstep: torch.LongTensor | None = None
    solver_residual: torch.FloatTensor | None = None
    jacobian_loss: torch.FloatTensor | None = None


@dataclass
class DEQCausalLMOutput(ModelOutput):
    """Causal LM output with solver statistics.

    Args:
        loss: next-token cross-entropy (with ``labels``), plus the Jacobian term in training.
        logits: ``(B, T, vocab)`` next-token scores.
        cache: equilibrium key/value cache for generation (``past_key_values`` on older transformers).
        hidden_states: the equilibrium state, when asked for.
        solver_nstep: ``(B,)`` solver steps to the returned state.
        solver_residual: ``(B,)`` residual of the returned state under the configured stop rule.
        jacobian_loss: Jacobian regularisation term (training with ``jacobian_reg_weight > 0``).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    if CACHE_FIELD == "cache":
        cache: object | None = None
    else:
        past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    solver_nstep: torch.LongTensor | None = None
    solver_residual: torch.FloatTensor | None = None
    jacobian_loss: torch.FloatTensor | None = None


@dataclass
class DEQImageClassifierOutput(ModelOutput):
    """Image classification output with solver statistics.

    Args:
        loss: cross-entropy (with ``labels``), plus the Jacobian term in training.
        logits: ``(B, num_labels)`` class scores.
        hidden_states: the equilibrium maps of every resolution, when asked for.
        solver_nstep: ``(B,)`` solver steps to the returned state.
        solver_residual: ``(B,)`` residual of the returned state under the configured stop rule.
        jacobian_loss: Jacobian regularisation term (training with ``jacobian_reg_weight > 0``).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    solver_nstep: torch.LongTensor | None = None
    solver_residual: torch.FloatTensor | None = None
    jacobian_loss: torch.FloatTensor | None = None


__all__ = ["CACHE_FIELD", "DEQCausalLMOutput", "DEQImageClassifierOutput", "DEQModelOutput"]
