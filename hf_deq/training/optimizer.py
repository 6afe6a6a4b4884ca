"""Parameter groups with one weight-decay rule, and the optimiser and learning-rate schedule builders."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .arguments import TrainingArgs

#: weight-norm parametrisations keep the gain ``g`` as ``...original0`` (shaped like the kernel, so ``ndim`` > 1)
WEIGHT_NORM_GAIN_SUFFIX = "original0"


def decays(name: str, param: torch.nn.Parameter) -> bool:
    """The weight-decay rule of every task: decay the matrices and kernels (``ndim >= 2``: linear, convolution
    and embedding weights, weight-norm directions); never biases, norm scales or weight-norm gains."""
    return param.ndim >= 2 and not name.endswith(WEIGHT_NORM_GAIN_SUFFIX)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """``[decayed, not decayed]`` trainable parameters of ``model`` (tied parameters once: ``named_parameters``
    dedups); the first group gets ``weight_decay``."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(args: TrainingArgs, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``args.optimizer`` (AdamW or SGD, with the learning rate, momentum and betas of ``args``) over
    ``parameter_groups(model, args.weight_decay)``."""
    groups = parameter_groups(model, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum, nesterov=args.nesterov)
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


def build_scheduler(args: TrainingArgs, optimizer, max_train_steps: int, num_processes: int):
    """``args.lr_scheduler_type`` over ``max_train_steps`` optimizer steps of ``optimizer``. Accelerate steps a
    prepared scheduler once per process, hence the factor ``num_processes``."""
    from transformers import get_scheduler

    kwargs = {"min_lr_rate": args.min_lr_ratio} if args.lr_scheduler_type == "cosine_with_min_lr" else {}
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
        scheduler_specific_kwargs=kwargs,
    )


__all__ = ["build_optimizer", "build_scheduler", "decays", "parameter_groups"]
