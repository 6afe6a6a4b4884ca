"""Seeing inside the solve: how close a phantom gradient is to the exact one, and how contractive the cell is.

- ``gradient_alignment(model, batch)``: the cosine similarity and relative error of the parameter gradient the
  model's configured estimator gives, against the exact implicit gradient (phantom-gradient paper, arXiv
  2111.05177, eq. 3, solved to a tight tolerance), overall and per parameter group. Theorem 1 of the paper: a
  phantom gradient is a descent direction while it stays close to the exact one; Fig. 2 measures this cosine.
- ``contractivity(model, batch)``: per DEQ layer and sample, the spectral radius of ``df/dz`` at the equilibrium
  (``hf_deq.deq.contractivity.spectral_radius``).

Both leave the model as they found it: weights, buffers (BatchNorm statistics), ``.grad``, config and the RNG
stream. They know no model family: they call ``model(**batch)`` and look at its ``DEQFixedPoint`` layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .deq import DEQFixedPoint, ImplicitDifferentiation
from .deq.contractivity import spectral_radius
from .deq.solvers import SolverResult


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Cosine similarity and relative error ``||g - g*|| / ||g*||`` of a gradient ``g`` against ``g*``."""

    cosine: float
    relative_error: float
    numel: int


@dataclasses.dataclass(frozen=True)
class GradientAlignment:
    """What ``gradient_alignment`` measured.

    Attributes:
        estimator: the configured estimator that was compared (its ``repr``).
        overall: the alignment of the whole parameter gradient.
        per_group: the alignment per parameter group (parameter names cut to ``group_depth`` components).
        reference_residual: the largest forward residual of the reference solve (how exact ``g*`` is).
    """

    estimator: str
    overall: Alignment
    per_group: dict[str, Alignment]
    reference_residual: float

    @property
    def cosine(self) -> float:
        return self.overall.cosine

    @property
    def relative_error(self) -> float:
        return self.overall.relative_error

    def as_metrics(self, prefix: str = "grad_alignment") -> dict[str, float]:
        """Flat metrics for a log line or a tracker: ``{prefix}_cosine``, ``{prefix}_relative_error``."""
        return {f"{prefix}_cosine": self.cosine, f"{prefix}_relative_error": self.relative_error}


def _deq_layers(model: nn.Module) -> list[DEQFixedPoint]:
    layers = [m for m in model.modules() if isinstance(m, DEQFixedPoint)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DEQFixedPoint layer: nothing to diagnose")
    return layers


@contextlib.contextmanager
def _model_preserved(model: nn.Module) -> Iterator[Callable[[], None]]:
    """Snapshot the RNG streams, buffers and layer flags; yield a function that rewinds RNG and buffers (called
    before each pass, so every pass sees the same dropout masks and BatchNorm statistics); restore on exit."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    warned = [(layer, layer._warned) for layer in _deq_layers(model)]

    def rewind() -> None:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)

    try:
        yield rewind
    finally:
        rewind()
        for layer, flag in warned:
            layer._warned = flag


@contextlib.contextmanager
def _layers_overridden(model: nn.Module, **attributes: Any) -> Iterator[None]:
    """Set engine attributes (``grad_estimator``, ``tol``, ``max_iter``, ...) on every DEQ layer for a while;
    the config is not touched, so the model's next forward does not rebuild its layers."""
    saved = [(layer, {name: getattr(layer, name) for name in attributes}) for layer in _deq_layers(model)]
    try:
        for layer, _ in saved:
            for name, value in attributes.items():
                setattr(layer, name, value)
        yield
    finally:
        for layer, values in saved:
            for name, value in values.items():
                setattr(layer, name, value)


def _loss_of(output: Any) -> Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", output)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(
            "gradient_alignment needs a batch with labels: the model output carries no scalar loss"
        )
    return loss


def _parameter_gradients(
    model: nn.Module, batch: Mapping[str, Any], params: list[tuple[str, nn.Parameter]]
) -> list[Tensor]:
    loss = _loss_of(model(**batch))
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for (_, p), g in zip(params, grads)]


def _alignment(estimate: list[Tensor], exact: list[Tensor]) -> Alignment:
    g = torch.cat([t.detach().flatten().double() for t in estimate])
    ref = torch.cat([t.detach().flatten().double() for t in exact])
    ref_norm = float(ref.norm())
    cosine = (
        float(torch.dot(g, ref) / (g.norm() * ref.norm())) if ref_norm > 0 and float(g.norm()) > 0 else 0.0
    )
    error = float((g - ref).norm()) / ref_norm if ref_norm > 0 else math.inf
    return Alignment(cosine=cosine, relative_error=error, numel=g.numel())


def gradient_alignment(
    model: nn.Module,
    batch: Mapping[str, Any],
    *,
    reference_tol: float = 1e-8,
    reference_max_iter: int = 100,
    group_depth: int = 2,
) -> GradientAlignment:
    """Compare the configured estimator's parameter gradient on ``batch`` with the exact implicit gradient.

    Two passes of ``model(**batch)`` from the same RNG state and buffers: one as configured (the training
    forward budget and estimator), one with every DEQ layer solving forward to ``reference_tol`` within
    ``reference_max_iter`` iterations and differentiating implicitly (GMRES to ``reference_tol``). The model's
    mode (train/eval) is used as it is; weights, buffers, ``.grad``, config and RNG stream are unchanged after.
    """
    layers = _deq_layers(model)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("gradient_alignment: the model has no trainable parameter")
    reference_results: list[SolverResult] = []

    def record(_module: nn.Module, _inputs: Any, output: tuple[Tensor, SolverResult]) -> None:
        reference_results.append(output[1])

    with _model_preserved(model) as rewind, torch.enable_grad():
        rewind()
        estimate = _parameter_gradients(model, batch, params)
        rewind()
        exact_estimator = ImplicitDifferentiation("gmres", max_iter=reference_max_iter, tol=reference_tol)
        hooks = [layer.register_forward_hook(record) for layer in layers]
        try:
            with _layers_overridden(
                model,
                grad_estimator=exact_estimator,
                tol=float(reference_tol),
                max_iter=reference_max_iter,
                eval_max_iter=reference_max_iter,
                on_failure="ignore",
            ):
                exact = _parameter_gradients(model, batch, params)
        finally:
            for hook in hooks:
                hook.remove()
    groups: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(params):
        groups.setdefault(".".join(name.split(".")[:group_depth]), []).append(i)
    per_group = {
        group: _alignment([estimate[i] for i in idx], [exact[i] for i in idx])
        for group, idx in groups.items()
    }
    residual = max((float(r.residual.max()) for r in reference_results), default=math.nan)
    return GradientAlignment(
        estimator=repr(layers[0].grad_estimator),
        overall=_alignment(estimate, exact),
        per_group=per_group,
        reference_residual=residual,
    )


def contractivity(model: nn.Module, batch: Mapping[str, Any], *, iters: int = 20) -> list[Tensor]:
    """Per DEQ layer (in call order), the ``(B,)`` spectral radius of ``df/dz`` at the equilibrium of ``batch``.

    One eval-mode forward without autograd finds each layer's equilibrium, then ``iters`` Jacobian-vector
    products estimate the radius (``spectral_radius``). Below 1: the cell contracts there.
    """
    captured: list[tuple[Callable[[Tensor], Tensor], Tensor]] = []

    def capture(_module: nn.Module, inputs: tuple, output: tuple[Tensor, SolverResult]) -> None:
        captured.append((inputs[0], output[1].z))

    hooks = [layer.register_forward_hook(capture) for layer in _deq_layers(model)]
    was_training = model.training
    try:
        model.eval()
        with _model_preserved(model) as rewind, torch.no_grad():
            rewind()
            model(**{k: v for k, v in batch.items() if k != "labels"})
            return [spectral_radius(fn, z, iters=iters) for fn, z in captured]
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


__all__ = ["Alignment", "GradientAlignment", "contractivity", "gradient_alignment", "spectral_radius"]
