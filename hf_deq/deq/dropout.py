"""Variational (locked) dropout: one mask per forward pass, shared by every solver iteration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch
from torch import Tensor, nn

#: The key of the solve running in this thread / task (``None`` outside one). ``DEQFixedPoint.forward`` sets a new
#: key for its call and restores the previous one on exit, so a mask is keyed per call, never per process.
_SOLVE_KEY: ContextVar[object | None] = ContextVar("hf_deq_dropout_solve_key", default=None)


@contextlib.contextmanager
def new_dropout_masks() -> Iterator[None]:
    """Inside the ``with`` block, every ``VariationalDropout`` draws one new mask at its first call and reuses it
    at every later call of the block. ``DEQFixedPoint.forward`` runs each forward inside one, so users never
    reset masks by hand; a nested block (a DEQ inside ``f``) gets its own masks and restores the outer ones."""
    token = _SOLVE_KEY.set(object())
    try:
        yield
    finally:
        _SOLVE_KEY.reset(token)


class VariationalDropout(nn.Module):
    """Dropout whose mask is drawn once per forward and reused at every iteration of ``f`` (a DEQ needs the
    same ``f`` at every iteration to have a fixed point; Gal & Ghahramani 2016, DEQ paper sec. 4).

    The mask is keyed by the call it was drawn in (``new_dropout_masks``); called outside any such call, the
    module reuses its last mask (``reset_mask`` forgets it).

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
        self._key: object | None = None

    def reset_mask(self) -> None:
        """Draw a new mask at the next call."""
        self._mask, self._key = None, None

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
            # A compiled cell reads the mask its forward's first (eager) call drew; comparing keys here
            # would make every forward a new graph (``CompiledCell``).
            return x * mask.to(x.dtype)
        key = _SOLVE_KEY.get()
        if (
            mask is None
            or (key is not None and key is not self._key)
            or list(mask.shape) != shape
            or mask.device != x.device
        ):
            keep = 1.0 - self.p
            mask = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(keep).div_(keep)
            self._mask, self._key = mask, key
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, broadcast_dims={self.broadcast_dims}"
