"""Output dataclasses of hf_deq models: the usual fields plus per-sample solver statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class DEQModelOutput(ModelOutput):
    """Base model output.

    Args:
        last_hidden_state: equilibrium state (for MDEQ the highest-resolution map).
        pooler_output: pooled features, where the model has them.
        hidden_states: for MDEQ, the equilibrium maps of every resolution.
        past_key_values: equilibrium key/value cache (DEQ-Transformer).
        solver_nstep: ``(B,)`` solver steps to the returned state.
        solver_residual: ``(B,)`` residual of the returned state under the configured stop rule.
        jacobian_loss: Jacobian regularisation term (training with ``jacobian_reg_weight > 0``).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    past_key_values: object | None = None
    solver_nstep: torch.LongTensor | None = None
    solver_residual: torch.FloatTensor | None = None
    jacobian_loss: torch.FloatTensor | None = None


@dataclass
class DEQCausalLMOutput(ModelOutput):
    """Causal LM output with solver statistics."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    solver_nstep: torch.LongTensor | None = None
    solver_residual: torch.FloatTensor | None = None
    jacobian_loss: torch.FloatTensor | None = None


@dataclass
class DEQImageClassifierOutput(ModelOutput):
    """Image classification output with solver statistics."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    solver_nstep: torch.LongTensor | None = None
    solver_residual: torch.FloatTensor | None = None
    jacobian_loss: torch.FloatTensor | None = None


__all__ = ["DEQCausalLMOutput", "DEQImageClassifierOutput", "DEQModelOutput"]
