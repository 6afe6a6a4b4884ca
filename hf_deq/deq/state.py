"""Pack a list of (multiscale) tensors into one ``(B, D)`` state and back."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StateSpec:
    """Per-sample shapes of the packed tensors, e.g. ``((24, 32, 32), (48, 16, 16))``."""

    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)


def pack_state(tensors: Sequence[Tensor]) -> tuple[Tensor, StateSpec]:
    """``tensors`` ``[(B, *s_1), (B, *s_2), ...] -> ((B, sum prod s_i), spec)``: one flat state and the spec
    that ``unpack_state`` needs."""
    if len(tensors) == 0:
        raise ValueError("pack_state needs at least one tensor")
    batch = tensors[0].shape[0]
    for i, t in enumerate(tensors):
        if t.shape[0] != batch:
            raise ValueError(f"pack_state: tensor {i} has batch size {t.shape[0]}, expected {batch}")
    spec = StateSpec(tuple(tuple(t.shape[1:]) for t in tensors))
    return torch.cat([t.reshape(batch, -1) for t in tensors], dim=1), spec


def unpack_state(z: Tensor, spec: StateSpec) -> list[Tensor]:
    """Inverse of ``pack_state``: views into ``z`` with the per-sample shapes recorded in ``spec``."""
    if z.dim() != 2 or z.shape[1] != spec.dim:
        raise ValueError(f"unpack_state: expected a state of shape (batch, {spec.dim}), got {tuple(z.shape)}")
    parts = torch.split(z, spec.sizes, dim=1)
    return [p.reshape(z.shape[0], *shape) for p, shape in zip(parts, spec.shapes)]
