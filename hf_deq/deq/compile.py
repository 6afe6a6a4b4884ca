"""``CompiledCell``: the weight-tied cell ``f`` compiled with ``torch.compile`` once per layer and input shape.

The models build ``f`` as a new closure at every forward (``lambda z: cell(z, injection)``). Compiling that
closure would trace it anew each step; instead one small function ``call(fn, z) = fn(z)`` is compiled per
layer and receives the closure as an argument. Dynamo then traces *into* ``fn`` and guards on its code and on
what it closes over (the cell module, the shapes and dtypes of the injection tensors), not on the closure
object, so a training step reuses the graphs of the previous one. Shapes are static (``dynamic=False``): a new
input shape (e.g. a smaller last batch) compiles once more, and so does each grad mode (the solve runs under
``no_grad``, the estimators' calls record a graph) and train/eval mode.

Each evaluation of ``f`` inside the solve and inside every estimator's backward goes through the compiled
graphs. The Jacobian-regularisation term (Bai et al. 2021, eq. 6) needs a double backward, which compiled
graphs do not have; it is compiled as one function ``||eps^T J||^2`` built with ``torch.func.vjp``, whose own
backward is an ordinary first-order one.

The first evaluation of each forward runs eagerly: it draws the forward's variational-dropout masks (Python
state that compiled graphs read but never draw, see ``VariationalDropout``). Parametrised weights (weight norm)
are recomputed inside each compiled call instead of being read from ``norm_cache``, which would give each
cache state a graph of its own.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor

from .solvers.base import FixedPointFn


def _call(fn: FixedPointFn, z: Tensor) -> Tensor:
    return fn(z)


def _jacobian_frobenius(fn: FixedPointFn, z: Tensor, eps: Tensor) -> Tensor:
    """``||eps^T dF/dz||^2 / (B D)`` with one probe ``eps`` (the estimate of ``jacobian_frobenius_loss``)."""
    _, vjp = torch.func.vjp(fn, z)
    (v,) = vjp(eps)
    batch, dim = z.shape[0], z[0].numel()
    return v.to(torch.promote_types(v.dtype, torch.float32)).pow(2).sum() / (batch * dim)


def _own_copy(function: types.FunctionType) -> types.FunctionType:
    """``function`` with a code object of its own: dynamo keeps its compiled graphs (and its recompile limit)
    per code object, so every layer gets its own cache instead of sharing one across all models."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__)


class CompiledCell:
    """The compiled evaluation of ``f`` for one ``DEQFixedPoint``.

    Args:
        compile_kwargs: passed to ``torch.compile`` (``mode``, ``backend``, ...); ``dynamic`` is ``False``
            unless given.
    """

    def __init__(self, compile_kwargs: dict[str, Any] | None = None) -> None:
        options = {"dynamic": False, **(compile_kwargs or {})}
        self.compile_kwargs = options
        self._call = torch.compile(_own_copy(_call), **options)
        self._jacobian = torch.compile(_own_copy(_jacobian_frobenius), **options)

    def wrap(self, fn: FixedPointFn) -> FixedPointFn:
        """``fn`` for one forward: its first call eager (it draws the dropout masks), every later one compiled."""
        compiled = self._call
        calls = 0

        def f(z: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return fn(z) if calls == 1 else compiled(fn, z)

        return f

    def jacobian_loss(self, fn: FixedPointFn, z: Tensor) -> Tensor:
        """``jacobian_frobenius_loss(fn(z), z)`` (one probe, drawn here as that function draws it), compiled."""
        eps = torch.randn_like(z)
        return self._jacobian(fn, z.detach(), eps)

    def __repr__(self) -> str:
        return f"CompiledCell({self.compile_kwargs})"
