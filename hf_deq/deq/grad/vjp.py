"""A custom autograd node shared by the estimators whose backward is a function of ``J^T`` products."""

from __future__ import annotations

import torch
from torch import Tensor


class JacobianTransposeProduct:
    """``v -> J^T v`` with ``J = dF/dz`` at the fixed point, reusing one recorded graph of ``F(z*)``."""

    def __init__(self, f_out: Tensor, z_in: Tensor) -> None:
        self.f_out = f_out
        self.z_in = z_in
        self.calls = 0

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        (jtv,) = torch.autograd.grad(self.f_out, self.z_in, v.to(self.f_out.dtype), retain_graph=True)
        return jtv.to(v.dtype)


class BackwardTransform:
    """What a ``GradientEstimator`` does in the backward pass: map ``g = dL/dz*`` to the vector ``w`` that is
    then backpropagated through one recorded call ``F(z*)`` (so parameters and inputs receive ``F_theta^T w``)."""

    def transform(self, jtv: JacobianTransposeProduct, grad: Tensor) -> Tensor:
        raise NotImplementedError


class _FixedPointNode(torch.autograd.Function):
    """Forward: the fixed point ``z*`` itself. Backward: ``w = transform(g)``, sent into ``F(z*)``'s graph."""

    @staticmethod
    def forward(ctx, f_out: Tensor, z_star: Tensor, z_in: Tensor, transform: BackwardTransform) -> Tensor:
        ctx.save_for_backward(f_out)
        ctx.z_in = z_in
        ctx.transform = transform
        return z_star.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (f_out,) = ctx.saved_tensors
        with torch.enable_grad():
            w = ctx.transform.transform(JacobianTransposeProduct(f_out, ctx.z_in), grad)
        return w.to(f_out.dtype), None, None, None


def attach_through_one_call(fn, z_star: Tensor, transform: BackwardTransform) -> Tensor:
    """Record ``F(z*)`` once with autograd and return a tensor with value ``z*`` whose backward is
    ``transform`` followed by backpropagation through that recorded call."""
    z_in = z_star.detach().requires_grad_()
    with torch.enable_grad():
        f_out = fn(z_in)
    return _FixedPointNode.apply(f_out, z_star.detach(), z_in, transform)
