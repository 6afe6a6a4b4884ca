"""What the solve benchmarks (``op_counts``, ``step_time``) share: presets with their inputs, the engine variants
compared (eager, sync-free, compiled cell, compiled solve), and the instrumentation of each DEQ layer's call.

``instrument(model)`` wraps every ``DEQFixedPoint`` of a model for the duration of a ``with`` block: each call is
one ``torch.profiler.record_function(SOLVE_RANGE)`` range, each evaluation of ``f`` inside it one
``F_RANGE`` range (outside any compiled region: with ``compile_cell`` the range encloses the call of the
compiled cell, never its inside), and the call's time, the time inside ``f`` and ``nfev`` are accumulated
(``SolveProbe``). With ``compile_solve`` ``f`` runs inside the compiled step and is not wrapped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import hf_deq
from hf_deq.deq import CompiledCell, DEQFixedPoint
from hf_deq.variants import get_variant

SOLVE_RANGE = "hf_deq.bench.solve"
F_RANGE = "hf_deq.bench.f"

#: The issue-15 setting of every measured solve: a fixed budget (tol never reached) in an eval forward.
EVAL_MAX_ITER = 10
EVAL_TOL = 1e-12
#: Inputs of each family in the measured forwards: 16 sequences x 64 tokens, 32 images.
BATCH = {"deq_transformer": 16, "mdeq": 32}
SEQ_LEN = 64

#: Engine variant -> config fields it sets on top of the preset (``compile_solve`` only where it exists).
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "sync_free": {"solver_kwargs": {"check_every": None}},
    "compile_cell": {"compile_cell": True},
    "compile_solve": {"compile_solve": True},
    "compile_solve_sync_free": {"compile_solve": True, "solver_kwargs": {"check_every": None}},
}
#: Variants whose ``f`` is a separate call that can be wrapped and clocked.
F_SEPARABLE = ("eager", "sync_free", "compile_cell")


def compile_solve_unavailable() -> str | None:
    """``None`` when the engine has ``DEQFixedPoint(compile_solve=True)``, else why the variant is skipped."""
    try:
        DEQFixedPoint(compile_solve=True)
    except TypeError:
        return "n/a: compile_solve not available"
    return None


def unavailable(variant: str) -> str | None:
    """Why ``variant`` cannot run with this engine (``None``: it can)."""
    return compile_solve_unavailable() if "compile_solve" in VARIANTS[variant] else None


def family(preset: str) -> str:
    """The model type of ``preset`` (``"deq_transformer"`` or ``"mdeq"``)."""
    return get_variant(preset).config_class.model_type


def make_inputs(
    config: Any, batch: int, seq_len: int, generator: torch.Generator, labels: bool = True
) -> dict[str, Tensor]:
    """Random inputs of a preset's model: images (``pixel_values``) or token ids (``input_ids``)."""
    if config.model_type == "mdeq":
        side = config.image_size
        inputs = {"pixel_values": torch.randn(batch, config.num_channels, side, side, generator=generator)}
        if labels:
            inputs["labels"] = torch.randint(0, config.num_labels, (batch,), generator=generator)
        return inputs
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids, "labels": ids.clone()} if labels else {"input_ids": ids}


def build_model(
    preset: str, variant: str, seed: int, compile_backend: str = "inductor", **fields: Any
) -> nn.Module:
    """``preset``'s model with ``variant``'s fields and ``fields`` (the same weights for every variant of one
    seed). ``compile_backend`` replaces inductor in the compiled cell and solve (``aot_eager`` for a smoke run)."""
    merged = {**fields, **VARIANTS[variant]}
    if "solver_kwargs" in fields and "solver_kwargs" in VARIANTS[variant]:
        merged["solver_kwargs"] = {**fields["solver_kwargs"], **VARIANTS[variant]["solver_kwargs"]}
    torch.manual_seed(seed)
    model = hf_deq.create_model(preset, **merged)
    if "compile_solve" in merged and getattr(model.config, "compile_solve", None) is not True:
        raise RuntimeError(f"{preset}: the config did not take compile_solve=True")
    if compile_backend != "inductor":
        for layer in model.deq_layers():
            if layer.compiled_cell is not None:
                layer.compiled_cell = CompiledCell({"backend": compile_backend})
            solve = getattr(layer, "compiled_solve", None)
            if solve is not None:  # the engine's CompiledSolve, where it has one
                layer.compiled_solve = type(solve)({"backend": compile_backend})
    return model


@dataclass
class SolveProbe:
    """What ``instrument`` accumulates over the DEQ calls of a ``with`` block."""

    calls: int = 0
    nfev: int = 0
    solve_s: float = 0.0
    f_s: float = 0.0
    last_fn: Any = None
    last_z: Tensor | None = None

    def take(self) -> tuple[float, float, int]:
        """``(solve seconds, seconds inside f, nfev)`` since the last call; resets them."""
        out = (self.solve_s, self.f_s, self.nfev)
        self.solve_s, self.f_s, self.nfev, self.calls = 0.0, 0.0, 0, 0
        return out


def _ranged(fn, probe: SolveProbe):
    def f(z: Tensor) -> Tensor:
        start = time.perf_counter()
        with torch.profiler.record_function(F_RANGE):
            out = fn(z)
        probe.f_s += time.perf_counter() - start
        return out

    return f


@contextlib.contextmanager
def instrument(model: nn.Module, wrap_f: bool = True) -> Iterator[SolveProbe]:
    """Wrap every DEQ layer of ``model`` (module doc) while the block runs; yields the ``SolveProbe``.
    ``wrap_f=False`` (``compile_solve``, where ``f`` is traced into the compiled step) leaves ``f`` alone."""
    probe = SolveProbe()
    restore = []
    for layer in model.deq_layers():
        compiled = layer.compiled_cell
        if wrap_f and compiled is not None:  # range and clock around the compiled call, not traced into it
            wrap = compiled.wrap
            compiled.wrap = lambda fn, wrap=wrap: _ranged(wrap(fn), probe)
            restore.append(lambda compiled=compiled: vars(compiled).pop("wrap"))
        eager_f = wrap_f and compiled is None

        def forward(fn, z0, *args, original=layer.forward, eager_f=eager_f, **kwargs):
            probe.last_fn, probe.calls = fn, probe.calls + 1
            start = time.perf_counter()
            with torch.profiler.record_function(SOLVE_RANGE):
                z, result = original(_ranged(fn, probe) if eager_f else fn, z0, *args, **kwargs)
            probe.solve_s += time.perf_counter() - start
            probe.nfev += result.nfev
            probe.last_z = z.detach()
            return z, result

        layer.forward = forward
        restore.append(lambda layer=layer: vars(layer).pop("forward"))
    try:
        yield probe
    finally:
        for undo in restore:
            undo()
