"""Model pieces shared by every hf_deq family: the initialisation of weight-normalised layers, the Jacobian
regularisation term of the task losses, and the parameter count."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers import initialization as init


def init_weight_norm_(module: nn.Module, init_direction: Callable[[Tensor], object]) -> None:
    """Initialise ``module.weight`` with ``init_direction`` (an in-place ``transformers.initialization`` function).

    With weight norm, ``w = g * v / ||v||`` (Salimans & Kingma 2016, eq. 2; ``hf_deq.deq.apply_weight_norm``),
    ``v`` is initialised and the gain set to ``g = ||v||``, so that ``w`` starts as ``init_direction`` made it.
    """
    if not parametrize.is_parametrized(module, "weight"):
        init_direction(module.weight)
        return
    gain = module.parametrizations.weight.original0
    direction = module.parametrizations.weight.original1
    init_direction(direction)
    norm = torch.linalg.vector_norm(direction.detach(), dim=tuple(range(1, direction.dim())), keepdim=True)
    init.copy_(gain, norm.view_as(gain))


def accumulation_share(num_items: int | Tensor, num_items_in_batch: int | Tensor) -> Tensor | float:
    """This batch's share ``num_items / num_items_in_batch`` of the loss items of all the batches accumulated into
    one optimiser step. ``Trainer`` passes ``num_items_in_batch`` to a model that takes it and then expects the
    loss summed over this batch's items and divided by it (it does not divide by the accumulation steps)."""
    if isinstance(num_items_in_batch, Tensor) and isinstance(num_items, Tensor):
        num_items_in_batch = num_items_in_batch.to(num_items.device)
    return num_items / num_items_in_batch


def add_jacobian_loss(
    loss: Tensor, jacobian_loss: Tensor | None, weight: float, share: Tensor | float | None = None
) -> Tensor:
    """``loss + weight * jacobian_loss``: the Jacobian regularisation of the training objective (Bai, Koltun,
    Kolter, "Stabilizing Equilibrium Models by Jacobian Regularization", ICML 2021, eq. 7). Unchanged when the
    term is off (``jacobian_loss is None`` or ``weight == 0``).

    Under gradient accumulation the term is weighted by this batch's ``share`` (``accumulation_share``), as the
    task loss is, so that the accumulated gradient holds it once, as one large batch would.
    """
    if jacobian_loss is None or not weight > 0:
        return loss
    if share is not None:
        jacobian_loss = jacobian_loss * share
    return loss + weight * jacobian_loss


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model``: every distinct parameter once (a tied weight, such as an LM head
    tied to its embedding, counts once; a weight-normalised layer counts its gain and direction), buffers (e.g.
    BatchNorm statistics) never. With ``trainable_only`` only those with ``requires_grad`` (e.g. the LoRA
    adapters of a ``peft`` model). Works for any ``nn.Module``: a model, a ``PeftModel``, an accelerate-wrapped
    model."""
    seen: dict[int, int] = {}
    for param in model.parameters():  # deduplicated by nn.Module; the id check keeps that rule explicit
        if param.requires_grad or not trainable_only:
            seen[id(param)] = param.numel()
    return sum(seen.values())


__all__ = ["accumulation_share", "add_jacobian_loss", "count_parameters", "init_weight_norm_"]
