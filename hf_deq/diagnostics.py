"""Seeing inside the solve: how close a phantom gradient is to the exact one, and how contractive the cell is.

- ``gradient_alignment(model, batch)``: the cosine similarity and relative error of the parameter gradient the
  model's configured estimator gives, against the exact implicit gradient (phantom-gradient paper, arXiv
  2111.05177, eq. 3, solved to a tight tolerance), overall and per parameter group. Theorem 1 of the paper: a
  phantom gradient is a descent direction while it stays close to the exact one; Fig. 2 measures this cosine.
- ``alignment_sweep(model, batch)``: the same against k and lambda for UPG and NPG (the paper's Fig. 2
  analysis), each setting swapped in for one pass; ``plot_alignment_sweep`` draws it.
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
    """How close a gradient ``g`` is to ``g*``: ``cosine`` similarity, ``relative_error``
    ``||g - g*|| / ||g*||``, and ``numel``, the number of gradient entries compared."""

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


def _reference_gradients(
    model: nn.Module,
    batch: Mapping[str, Any],
    params: list[tuple[str, nn.Parameter]],
    reference_tol: float,
    reference_max_iter: int,
) -> tuple[list[Tensor], float]:
    """The exact implicit parameter gradient (forward solved to ``reference_tol``, GMRES backward to the same
    tolerance) and the largest forward residual of that solve. Call inside ``_model_preserved``, rewound."""
    layers = _deq_layers(model)
    reference_results: list[SolverResult] = []

    def record(_module: nn.Module, _inputs: Any, output: tuple[Tensor, SolverResult]) -> None:
        reference_results.append(output[1])

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
    residual = max((float(r.residual.max()) for r in reference_results), default=math.nan)
    return exact, residual


def _trainable(model: nn.Module, caller: str) -> list[tuple[str, nn.Parameter]]:
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{caller}: the model has no trainable parameter")
    return params


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
    Parameter groups are the parameter names cut to ``group_depth`` dotted components.
    """
    layers = _deq_layers(model)
    params = _trainable(model, "gradient_alignment")
    with _model_preserved(model) as rewind, torch.enable_grad():
        rewind()
        estimate = _parameter_gradients(model, batch, params)
        rewind()
        exact, residual = _reference_gradients(model, batch, params, reference_tol, reference_max_iter)
    groups: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(params):
        groups.setdefault(".".join(name.split(".")[:group_depth]), []).append(i)
    per_group = {
        group: _alignment([estimate[i] for i in idx], [exact[i] for i in idx])
        for group, idx in groups.items()
    }
    return GradientAlignment(
        estimator=repr(layers[0].grad_estimator),
        overall=_alignment(estimate, exact),
        per_group=per_group,
        reference_residual=residual,
    )


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One estimator setting of ``alignment_sweep``: ``estimator`` (UPG/NPG name), ``steps`` (k), ``damping``
    (lambda), and its alignment with the exact gradient (``cosine``, ``relative_error``)."""

    estimator: str
    steps: int
    damping: float
    cosine: float
    relative_error: float


def alignment_sweep(
    model: nn.Module,
    batch: Mapping[str, Any],
    *,
    estimators: tuple[str, ...] = ("upg", "npg"),
    steps: tuple[int, ...] = (1, 2, 4, 8, 16),
    dampings: tuple[float, ...] = (0.5, 0.8, 1.0),
    reference_tol: float = 1e-8,
    reference_max_iter: int = 100,
) -> tuple[list[SweepPoint], float]:
    """The phantom-gradient paper's analysis (arXiv 2111.05177, sec. 3, Fig. 2): the cosine similarity and
    relative error of UPG(k, lambda) / NPG(k, lambda) (eqs. 9-10) against the exact implicit gradient (eq. 3)
    for every ``estimators x steps x dampings``, on one batch.

    The exact gradient is computed once (as in ``gradient_alignment``, with ``reference_tol`` and
    ``reference_max_iter``); each setting swaps every DEQ layer's
    estimator for one pass (the config is not touched) from the same RNG state and buffers, so all settings
    differentiate the same forward solve. Returns the points and the reference solve's largest residual; the
    model is left as it was (weights, buffers, ``.grad``, config, estimators, RNG stream).
    """
    from .deq import get_grad_estimator

    params = _trainable(model, "alignment_sweep")
    settings = [
        (name, get_grad_estimator(name, steps=k, damping=lam), k, lam)
        for name in estimators
        for k in steps
        for lam in dampings
    ]  # built first: a bad name, k or lambda raises before any computation
    points = []
    with _model_preserved(model) as rewind, torch.enable_grad():
        rewind()
        exact, residual = _reference_gradients(model, batch, params, reference_tol, reference_max_iter)
        for name, estimator, k, lam in settings:
            rewind()
            with _layers_overridden(model, grad_estimator=estimator):
                estimate = _parameter_gradients(model, batch, params)
            found = _alignment(estimate, exact)
            points.append(SweepPoint(name, k, float(lam), found.cosine, found.relative_error))
    return points, residual


def sweep_points(summary: Mapping[str, Any]) -> list[SweepPoint]:
    """The points of a JSON summary written by ``scripts/gradient_alignment_sweep.py`` (``None`` is NaN)."""

    def number(value: Any) -> float:
        return math.nan if value is None else float(value)

    return [
        SweepPoint(
            p["estimator"],
            int(p["steps"]),
            float(p["damping"]),
            number(p["cosine"]),
            number(p["relative_error"]),
        )
        for p in summary["points"]
    ]


def plot_alignment_sweep(
    points: list[SweepPoint] | Mapping[str, list[SweepPoint]], path: str, title: str = ""
) -> None:
    """Cosine similarity and relative error against k, one line per (estimator, lambda); one row of two panels
    per entry when ``points`` maps row labels (e.g. "trained", "at initialisation") to points; written to the
    PNG ``path`` under the figure ``title``. The PNG of ``scripts/gradient_alignment_sweep.py`` and of the docs
    (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dict(points) if isinstance(points, Mapping) else {"": points}
    fig, axes = plt.subplots(len(rows), 2, figsize=(9, 3.1 * len(rows)), dpi=64, squeeze=False)
    styles = {"upg": "-", "npg": "--"}
    for (label, row), (ax_cos, ax_err) in zip(rows.items(), axes):
        keys = sorted({(p.estimator, p.damping) for p in row}, key=lambda e: (e[0] != "upg", e[1]))
        colors = {lam: f"C{i}" for i, lam in enumerate(sorted({lam for _, lam in keys}))}
        for name, lam in keys:
            line = sorted((p for p in row if (p.estimator, p.damping) == (name, lam)), key=lambda p: p.steps)
            ks = [p.steps for p in line]
            style = dict(linestyle=styles.get(name, ":"), marker="o", markersize=3, color=colors[lam])
            ax_cos.plot(ks, [p.cosine for p in line], label=f"{name.upper()} λ={lam:g}", **style)
            ax_err.plot(ks, [p.relative_error for p in line], **style)
        for ax, what in ((ax_cos, "cosine to exact"), (ax_err, "relative error")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k (phantom steps)")
            ax.set_ylabel(f"{label}: {what}" if label else what, fontsize=8)
            ax.grid(alpha=0.3)
        ax_cos.set_ylim(-0.05, 1.02)
        ax_err.set_yscale("log")
        ax_cos.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def contractivity(model: nn.Module, batch: Mapping[str, Any], *, iters: int = 20) -> list[Tensor]:
    """Per DEQ layer of ``model`` (in call order), the ``(B,)`` spectral radius of ``df/dz`` at the equilibrium of
    ``batch``.

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


__all__ = [
    "Alignment",
    "GradientAlignment",
    "SweepPoint",
    "alignment_sweep",
    "contractivity",
    "gradient_alignment",
    "plot_alignment_sweep",
    "sweep_points",
    "spectral_radius",
]
