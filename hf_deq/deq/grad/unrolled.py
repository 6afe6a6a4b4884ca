"""Plain backpropagation through explicit iterations (the warm-up before DEQ training)."""

from __future__ import annotations

from torch import Tensor

from ..solvers.base import FixedPointFn
from .base import GradientEstimator, check_steps
from .phantom import damped_unroll


class UnrolledBackprop(GradientEstimator):
    """Backprop through ``steps`` explicit iterations ``z_{t+1} = F(z_t)`` from the initial state, as a
    weight-tied ``steps``-layer network: the unrolled warm-up of the DEQ recipes (Bai et al. 2019), which the
    phantom-gradient paper's WikiText-103 recipes (Geng et al. 2021) also use. ``DEQFixedPoint`` skips the
    forward solve in training and passes ``z0``.
    """

    label = "unrolled"
    description = (
        "plain backpropagation through k explicit iterations from the initial state (the unrolled warm-up "
        "of Bai et al. 2019)"
    )

    needs_fixed_point = False

    def __init__(self, steps: int = 5) -> None:
        self.steps = check_steps(type(self).__name__, steps)

    def attach(self, fn: FixedPointFn, z_star: Tensor) -> Tensor:
        return damped_unroll(fn, z_star.detach(), self.steps, 1.0)
