"""Gradient estimator base class."""

from __future__ import annotations

from torch import Tensor

from ..solvers.base import FixedPointFn


class GradientEstimator:
    """Attaches a gradient to a fixed point found without autograd.

    ``attach(fn, z_star)`` takes the detached fixed point ``z_star`` (``(B, D)``) and returns the tensor the
    model continues with; its backward carries this estimator's gradient to the parameters of ``fn`` and to
    every tensor ``fn`` closes over (the input injection). Hyperparameters are constructor arguments.
    """

    #: Short name on the model card (``"UPG"``); a subclass without its own shows its registry name.
    label: str = ""
    #: One line on the method, citing the paper equation (the model card's estimator row); without it, the first
    #: paragraph of the class docstring. The DEQ fields it reads are its constructor arguments
    #: (``hf_deq.deq_fields.estimator_fields``).
    description: str = ""
    #: True for the phantom gradients (arXiv 2111.05177): an approximation of the implicit gradient computed
    #: from the fixed point (the card's "phantom-gradient" tag, ``scripts/gradient_alignment_sweep.py``).
    phantom_gradient: bool = False

    #: False for estimators that do not start from a fixed point (plain unrolling from ``z0``):
    #: ``DEQFixedPoint`` then skips the forward solve in training and passes ``z0``.
    needs_fixed_point: bool = True

    def attach(self, fn: FixedPointFn, z_star: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def check_steps(owner: str, steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{owner}.steps must be an integer >= 1, got {steps!r}")
    return steps


def check_damping(owner: str, damping: object) -> float:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 < damping <= 1:
        raise ValueError(f"{owner}.damping must be in (0, 1], got {damping!r}")
    return float(damping)
