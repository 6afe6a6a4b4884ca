"""Training-step time per engine variant and the solver's overhead per evaluation of ``f`` (issue 15, item 4).

**Step time.** One copy of a preset's model per variant, all with the same weights and inputs, trains forward +
backward (the preset's estimator, UPG on the shipped presets). Each first runs ``warmup_steps`` untimed steps
(compilation happens there: a variant's compile time is its warm-up time minus eager's), then ``rounds`` rounds
in which every variant in turn runs a timed block of ``block_steps`` steps, so that load on the machine hits all
variants alike (quote ratios from one run). Step time: the median over the timed steps.

**Solver overhead.** Eval forward solves (``EVAL_MAX_ITER`` evaluations, tol ``EVAL_TOL``) of each solver,
timed round-robin like ``measure.Timer`` (one warm-up round, median over ``repeats``). Where ``f`` is a call of
its own (eager, ``compile_cell``) the overhead is measured inside each solve as in ``benchmark_estimators.py``:
(time of the DEQ call - time inside ``f``) / time inside ``f``. With ``compile_solve`` ``f`` has no call of its
own; there the time of ``f`` is that of the compiled cell alone (``CompiledCell``) evaluated ``nfev`` times at
the solve's output in the same round, and the overhead is (solve - that) / that.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hf_deq.deq import CompiledCell

from .solve_setup import (
    BATCH,
    EVAL_MAX_ITER,
    EVAL_TOL,
    F_SEPARABLE,
    SEQ_LEN,
    build_model,
    family,
    instrument,
    make_inputs,
    unavailable,
)
from .tables import table

STEP_VARIANTS = ("eager", "compile_cell", "compile_solve")
OVERHEAD_SOLVERS = ("anderson", "broyden")
#: Issue 15's targets: compile_solve's step at least this much faster than eager's; overhead per f below these.
MIN_SPEEDUP = 1.5
MAX_OVERHEAD_PCT = {"anderson": 10.0, "broyden": 15.0}


def _train_step(model, inputs) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(**inputs).loss.backward()
    return time.perf_counter() - start


def step_times(
    preset: str,
    variants: Sequence[str],
    batch: int,
    seq_len: int,
    warmup_steps: int,
    rounds: int,
    block_steps: int,
    seed: int = 0,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """Step time of each available variant of ``preset`` (module doc), and its ratio to eager's."""
    runnable = [v for v in variants if unavailable(v) is None]
    base = build_model(preset, "eager", seed, compile_backend, solver_on_failure="ignore").train()
    models = {}
    for variant in runnable:
        model = build_model(preset, variant, seed, compile_backend, solver_on_failure="ignore").train()
        model.load_state_dict(copy.deepcopy(base.state_dict()))
        models[variant] = model
    inputs = make_inputs(base.config, batch, seq_len, torch.Generator().manual_seed(seed))
    warmup = {v: sum(_train_step(m, inputs) for _ in range(warmup_steps)) for v, m in models.items()}
    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(rounds):
        for variant, model in models.items():
            times[variant].extend(_train_step(model, inputs) for _ in range(block_steps))
    step_ms = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
    eager_ms, eager_warmup = step_ms.get("eager"), warmup.get("eager")
    rows = []
    for variant in variants:
        reason = unavailable(variant)
        if reason is not None:
            rows.append({"variant": variant, "skipped": reason})
            continue
        speedup = None if eager_ms is None else eager_ms / step_ms[variant]
        compile_s = None if eager_warmup is None else warmup[variant] - eager_warmup
        row = {"variant": variant, "step_ms": step_ms[variant], "speedup_vs_eager": speedup}
        row |= {"compile_s": compile_s, "timed_steps": len(times[variant])}
        if variant.startswith("compile_solve") and speedup is not None:
            row["target_met"] = speedup >= MIN_SPEEDUP
        rows.append(row)
    config = base.config
    return {
        "preset": preset,
        "grad_estimator": config.grad_estimator,
        "solver": config.solver,
        "inputs": f"{batch} images" if config.model_type == "mdeq" else f"{batch} x {seq_len} tokens",
        "rows": rows,
    }


def solver_overheads(
    preset: str,
    solver: str,
    variants: Sequence[str],
    batch: int,
    seq_len: int,
    repeats: int,
    max_iter: int = EVAL_MAX_ITER,
    seed: int = 0,
    compile_backend: str = "inductor",
) -> list[dict[str, Any]]:
    """Overhead per evaluation of ``f`` of ``solver`` on ``preset``, one row per variant (module doc)."""
    fields = {"solver": solver, "solver_eval_max_iter": max_iter, "solver_tol": EVAL_TOL}
    runnable = [v for v in variants if unavailable(v) is None]
    models = {
        v: build_model(preset, v, seed, compile_backend, solver_on_failure="ignore", **fields).eval()
        for v in runnable
    }
    inputs = {}
    if models:
        config = next(iter(models.values())).config
        inputs = make_inputs(config, batch, seq_len, torch.Generator().manual_seed(seed), labels=False)
    f_alone = CompiledCell({"backend": compile_backend})
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in runnable}
    nfevs: dict[str, int] = {}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for variant, model in models.items():
                separable = variant in F_SEPARABLE
                with instrument(model, wrap_f=separable) as probe:
                    model(**inputs)
                solve_s, f_s, nfev = probe.take()
                if not separable:  # f alone, compiled, as often as the solve evaluated it
                    fn, z = probe.last_fn, probe.last_z
                    call = f_alone.wrap(fn)
                    call(z)  # the eager first call of a wrapped f (dropout masks)
                    start = time.perf_counter()
                    for _ in range(nfev):
                        call(z)
                    f_s = time.perf_counter() - start
                nfevs[variant] = nfev
                if round_ > 0:
                    samples[variant].append((solve_s, f_s))
    rows = []
    for variant in variants:
        reason = unavailable(variant)
        if reason is not None:
            rows.append({"preset": preset, "solver": solver, "variant": variant, "skipped": reason})
            continue
        pairs = samples[variant]
        overhead = statistics.median((s - f) / f * 100 for s, f in pairs)
        row = {"preset": preset, "solver": solver, "variant": variant, "nfev": nfevs[variant]}
        row |= {
            "solve_ms": statistics.median(s for s, _ in pairs) * 1e3,
            "f_ms_per_eval": statistics.median(f for _, f in pairs) * 1e3 / nfevs[variant],
            "overhead_pct": overhead,
            "f_measured": "inside the solve" if variant in F_SEPARABLE else "compiled cell alone",
        }
        if variant.startswith("compile_solve"):
            row["target_met"] = overhead < MAX_OVERHEAD_PCT[solver]
        rows.append(row)
    return rows


def step_suite(
    presets: Sequence[str],
    variants: Sequence[str] = STEP_VARIANTS,
    batch_size: int | None = None,
    seq_len: int = SEQ_LEN,
    warmup_steps: int = 2,
    rounds: int = 5,
    block_steps: int = 2,
    repeats: int = 3,
    max_iter: int = EVAL_MAX_ITER,
    seed: int = 0,
    compile_backend: str = "inductor",
    echo: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """``{"steps": one entry per preset, "overheads": one row per preset, solver and variant}``."""
    steps, overheads = [], []
    for preset in presets:
        batch = batch_size or BATCH[family(preset)]
        steps.append(
            step_times(
                preset, variants, batch, seq_len, warmup_steps, rounds, block_steps, seed, compile_backend
            )
        )
        echo(f"  timed training steps of {preset}")
        for solver in OVERHEAD_SOLVERS:
            overheads += solver_overheads(
                preset, solver, variants, batch, seq_len, repeats, max_iter, seed, compile_backend
            )
            echo(f"  timed {solver} solves of {preset}")
    return {"steps": steps, "overheads": overheads}


def _verdict(row: dict) -> str:
    met = row.get("target_met")
    return "" if met is None else ("met" if met else "MISSED")


def step_lines(result: dict[str, list[dict[str, Any]]], max_iter: int = EVAL_MAX_ITER) -> list[str]:
    """The step-time and overhead tables of ``step_suite`` and their notes."""
    cells = []
    for entry in result["steps"]:
        for row in entry["rows"]:
            head = [entry["preset"], entry["grad_estimator"], entry["inputs"], row["variant"]]
            if "skipped" in row:
                cells.append([*head, "-", "-", "-", row["skipped"]])
                continue
            speedup = "-" if row["speedup_vs_eager"] is None else f"{row['speedup_vs_eager']:.2f}x"
            compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
            target = f">= {MIN_SPEEDUP}x: {_verdict(row)}" if "target_met" in row else ""
            cells.append([*head, f"{row['step_ms']:.1f}", speedup, compile_s, target])
    steps = table(
        ["preset", "estimator", "inputs", "variant", "ms / step", "speedup vs eager", "compile s", "target"],
        cells,
    )
    cells = []
    for row in result["overheads"]:
        head = [row["preset"], row["solver"], row["variant"]]
        if "skipped" in row:
            cells.append([*head, "-", "-", "-", "-", row["skipped"]])
            continue
        target = f"< {MAX_OVERHEAD_PCT[row['solver']]:g}%: {_verdict(row)}" if "target_met" in row else ""
        cells.append(
            [
                *head,
                f"{row['solve_ms']:.1f}",
                f"{row['f_ms_per_eval']:.2f}",
                f"{row['overhead_pct']:+.0f}%",
                row["f_measured"],
                target,
            ]
        )
    overheads = table(
        ["preset", "solver", "variant", "solve ms", "f ms / eval", "overhead / eval", "f timed", "target"],
        cells,
    )
    return [
        "### Training step (forward + backward), variants side by side",
        "",
        steps,
        "",
        "- Same weights and inputs; timed blocks alternate between the variants; median step time. Compile s: "
        "warm-up time minus eager's.",
        "",
        f"### Solver overhead per evaluation of f (eval forward, {max_iter} evaluations, tol {EVAL_TOL:g})",
        "",
        overheads,
        "",
        "- Overhead = (time of the DEQ call - time of f) / time of f, median over repeats; f timed inside the "
        "solve, or (compile_solve) the compiled cell alone as many times as the solve evaluated it.",
    ]
