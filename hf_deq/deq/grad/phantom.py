"""Phantom gradients (Geng et al., "On Training Implicit Models", NeurIPS 2021, arXiv 2111.05177)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..solvers.base import FixedPointFn
from .base import GradientEstimator, check_damping, check_steps
from .vjp import BackwardTransform, JacobianTransposeProduct, attach_through_one_call


def damped_unroll(fn: FixedPointFn, z: Tensor, steps: int, damping: float) -> Tensor:
    """``h_{t+1} = damping * F(h_t) + (1 - damping) * h_t`` for ``steps`` steps, under autograd."""
    h = z
    with torch.enable_grad():
        for _ in range(steps):
            fh = fn(h)
            h = fh if damping == 1.0 else damping * fh + (1.0 - damping) * h
    return h


class UnrolledPhantomGradient(GradientEstimator):
    """UPG(k, lambda), paper eq. 9: from ``h_0 = z*`` (detached) run ``k`` damped steps under autograd; the
    model continues with ``h_k``. The implied gradient is ``lambda F_theta^T sum_t (B^T)^t`` with
    ``B = lambda J + (1 - lambda) I`` evaluated along the unrolled path. Memory grows with ``k``.

    Args:
        steps: ``k``, the number of damped steps.
        damping: ``lambda`` in ``(0, 1]``.
    """

    label = "UPG"
    description = (
        "unrolling-based phantom gradient UPG(k, lambda) (arXiv 2111.05177, eq. 9): after the no-grad solve, "
        "k damped steps h <- lambda F(h) + (1 - lambda) h are unrolled under autograd from the fixed point"
    )
    phantom_gradient = True

    def __init__(self, steps: int = 5, damping: float = 0.5) -> None:
        self.steps = check_steps(type(self).__name__, steps)
        self.damping = check_damping(type(self).__name__, damping)

    def attach(self, fn: FixedPointFn, z_star: Tensor) -> Tensor:
        return damped_unroll(fn, z_star.detach(), self.steps, self.damping)


class OneStepGradient(UnrolledPhantomGradient):
    """One-step gradient (Jacobian-free backprop, Fung et al. 2022): UPG with ``k = 1``, ``lambda = 1``,
    i.e. ``dL/dtheta ~= g F_theta`` at ``z*``."""

    label = "one-step"
    description = "one-step (Jacobian-free) gradient (Fung et al. 2022): UPG with k = 1, lambda = 1"

    def __init__(self) -> None:
        super().__init__(steps=1, damping=1.0)


class NeumannPhantomGradient(GradientEstimator, BackwardTransform):
    """NPG(k, lambda), paper eq. 10: forward value ``z*``; backward
    ``v = sum_{i<k} (B^T)^i g`` with ``B = lambda J + (1 - lambda) I``, then ``lambda F_theta^T v`` to the
    parameters and inputs. All ``J^T`` products reuse one recorded graph of ``F(z*)``: memory is O(1) in
    ``k``.

    Args:
        steps: ``k``, the number of terms of the series.
        damping: ``lambda`` in ``(0, 1]``.
    """

    label = "NPG"
    description = (
        "Neumann-series phantom gradient NPG(k, lambda) (arXiv 2111.05177, eq. 10): the backward pass sums "
        "k terms of the damped Neumann series of (I - J)^-1, memory O(1) in k"
    )
    phantom_gradient = True

    def __init__(self, steps: int = 5, damping: float = 0.5) -> None:
        self.steps = check_steps(type(self).__name__, steps)
        self.damping = check_damping(type(self).__name__, damping)

    def attach(self, fn: FixedPointFn, z_star: Tensor) -> Tensor:
        return attach_through_one_call(fn, z_star, self)

    def transform(self, jtv: JacobianTransposeProduct, grad: Tensor) -> Tensor:
        lam = self.damping
        term = grad.detach()
        total = term
        for _ in range(self.steps - 1):
            term = lam * jtv(term) + (1.0 - lam) * term
            total = total + term
        return lam * total
