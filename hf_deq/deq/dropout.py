"""Variational (locked) dropout: one mask per forward pass, shared by every solver iteration."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_GENERATION = 0


def new_dropout_masks() -> None:
    """Make every ``VariationalDropout`` draw a new mask at its next call. ``DEQFixedPoint`` calls this at the
    start of each forward, so users never reset masks by hand."""
    global _GENERATION
    _GENERATION += 1


class VariationalDropout(nn.Module):
    """Dropout whose mask is drawn once per forward and reused at every iteration of ``f`` (a DEQ needs the
    same ``f`` at every iteration to have a fixed point; Gal & Ghahramani 2016, DEQ paper sec. 4).

    Args:
        p: drop probability in ``[0, 1)``.
        broadcast_dims: dimensions the mask is shared along (e.g. ``(1,)`` for the sequence dimension of
            ``(B, T, C)`` states, ``(2, 3)`` to drop whole channels of ``(B, C, H, W)`` maps).
    """

    def __init__(self, p: float = 0.0, broadcast_dims: Sequence[int] = ()) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"VariationalDropout.p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.broadcast_dims = tuple(broadcast_dims)
        self._mask: Tensor | None = None
        self._generation = -1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = [1 if i in self.broadcast_dims else s for i, s in enumerate(x.shape)]
        mask = self._mask
        if (
            torch.compiler.is_compiling()
            and mask is not None
            and list(mask.shape) == shape
            and mask.device == x.device
        ):
            # A compiled cell reads the mask its forward's first (eager) call drew; comparing generations here
            # would make every forward a new graph (``CompiledCell``).
            return x * mask.to(x.dtype)
        if (
            mask is None
            or self._generation != _GENERATION
            or list(mask.shape) != shape
            or mask.device != x.device
        ):
            keep = 1.0 - self.p
            mask = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(keep).div_(keep)
            self._mask, self._generation = mask, _GENERATION
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, broadcast_dims={self.broadcast_dims}"
