"""Operators dispatched per solver iteration (issue 15, item 3): inside ``f``, outside it, host syncs.

One eval forward (``no_grad``, ``EVAL_MAX_ITER`` evaluations, tolerance ``EVAL_TOL`` so the whole budget runs)
is profiled with ``torch.profiler`` (CPU, shapes not recorded) after unprofiled forwards (warm-up and, for the
compiled variants, compilation). What is counted, inside each DEQ call (``solve_setup.SOLVE_RANGE``):

* a **dispatch** is a top-level ATen operator (an ``aten::`` event with no ``aten::`` event above it: the ops
  an operator calls internally are not counted again) or a call of a compiled region (``Torch-Compiled
  Region``, one per call of a ``torch.compile``'d function). Inside a compiled region the ATen operators that
  inductor leaves outside its generated kernels (extern ``mm`` / ``addmm`` / ``bmm``, ``linalg`` calls,
  attention) are dispatches too; the generated kernels themselves are not ATen operators and are not counted,
  nor are the guard checks (``TorchDynamo Cache Lookup``).
* **inside f**: the dispatches under an ``F_RANGE`` range (one per evaluation of ``f``; with ``compile_cell``
  the compiled call and its extern ops); **outside f**: the rest of the DEQ call (the solver's update,
  residuals, best iterate, stop test, and its once-per-solve setup and result). ``compile_solve`` fuses ``f``
  into the step, so only the total is reported there.
* **host syncs**: ``aten::is_nonzero``, ``aten::item`` and ``aten::_local_scalar_dense`` events, each counted
  once (not again for the ones it calls).

Two figures per count: over the solve, the count divided by ``nfev`` (the once-per-solve setup and result
spread over the ``EVAL_MAX_ITER`` evaluations), and steady, per further iteration: a second forward with twice
the budget is profiled, and the difference of the counts is divided by the difference of ``nfev`` (what one more
iteration dispatches; the target is checked on this one). The raw integer counts are kept beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .measure import quiet_stderr
from .solve_setup import (
    BATCH,
    EVAL_MAX_ITER,
    EVAL_TOL,
    F_RANGE,
    F_SEPARABLE,
    SEQ_LEN,
    SOLVE_RANGE,
    build_model,
    family,
    instrument,
    make_inputs,
    unavailable,
)
from .tables import table

COMPILED_REGION = "Torch-Compiled Region"
SYNC_OPS = frozenset({"aten::is_nonzero", "aten::item", "aten::_local_scalar_dense"})
SOLVERS = ("fixed_point", "anderson", "broyden")
#: Issue 15's target: ATen operators per iteration, f included, for these solvers with compile_solve.
MAX_OPS_PER_ITERATION = 20
TARGET_SOLVERS = ("anderson", "broyden")
TARGET_VARIANTS = ("compile_solve", "compile_solve_sync_free")


def is_dispatch(name: str) -> bool:
    return name.startswith("aten::") or name.startswith(COMPILED_REGION)


def count_dispatches(events: Iterable[Any]) -> dict[str, int]:
    """Integer counts over every ``SOLVE_RANGE`` of a profile (``prof.events()``): ``inside_f``,
    ``outside_f``, ``total`` dispatches and ``host_syncs`` (module doc)."""
    counts = {"inside_f": 0, "outside_f": 0, "total": 0, "host_syncs": 0}
    for event in events:
        name = event.name
        dispatch, sync = is_dispatch(name), name in SYNC_OPS
        if not (dispatch or sync):
            continue
        in_solve = in_f = under_op = under_sync = False
        parent = event.cpu_parent
        while parent is not None:
            in_f |= parent.name == F_RANGE
            under_op |= parent.name.startswith("aten::")
            under_sync |= parent.name in SYNC_OPS
            if parent.name == SOLVE_RANGE:
                in_solve = True
                break
            parent = parent.cpu_parent
        if not in_solve:
            continue
        if sync and not under_sync:
            counts["host_syncs"] += 1
        if dispatch and not under_op:
            counts["total"] += 1
            counts["inside_f" if in_f else "outside_f"] += 1
    return counts


def _profile_forward(model, inputs: dict, separable: bool) -> tuple[dict[str, int], int]:
    """Counts and ``nfev`` of one profiled forward (after one unprofiled forward of the same budget)."""
    model(**inputs)
    with instrument(model, wrap_f=separable) as probe, quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            model(**inputs)
    return count_dispatches(prof.events()), probe.nfev


def profile_solve(
    preset: str,
    solver: str,
    variant: str,
    batch: int,
    seq_len: int,
    max_iter: int = EVAL_MAX_ITER,
    seed: int = 0,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """The row of one preset, solver and variant: raw counts and ``nfev`` of a solve of ``max_iter`` and of
    ``2 * max_iter`` evaluations, the figures per evaluation over the first (``per_eval``) and per further
    iteration (``per_iteration``, the difference of the two over the difference of their ``nfev``)."""
    fields = {"solver": solver, "solver_eval_max_iter": max_iter, "solver_tol": EVAL_TOL}
    model = build_model(preset, variant, seed, compile_backend, solver_on_failure="ignore", **fields).eval()
    inputs = make_inputs(model.config, batch, seq_len, torch.Generator().manual_seed(seed), labels=False)
    separable = variant in F_SEPARABLE
    with torch.no_grad():
        model(**inputs)  # compilation, for the compiled variants
        counts, nfev = _profile_forward(model, inputs, separable)
        model.config.solver_eval_max_iter = 2 * max_iter  # applied to the layers at the next forward
        counts_long, nfev_long = _profile_forward(model, inputs, separable)
    per_eval = {key: value / nfev for key, value in counts.items()}
    per_iteration = {key: (counts_long[key] - value) / (nfev_long - nfev) for key, value in counts.items()}
    if not separable:
        for figures in (per_eval, per_iteration):
            figures["inside_f"] = figures["outside_f"] = None
    row = {"preset": preset, "solver": solver, "variant": variant, "nfev": nfev, "counts": counts}
    row |= {"nfev_long": nfev_long, "counts_long": counts_long}
    return row | {"per_eval": per_eval, "per_iteration": per_iteration}


def target_met(row: dict[str, Any]) -> bool | None:
    """Whether ``row`` meets ``MAX_OPS_PER_ITERATION`` (``None`` where the target does not apply)."""
    if row["solver"] not in TARGET_SOLVERS or row["variant"] not in TARGET_VARIANTS or "skipped" in row:
        return None
    return row["per_iteration"]["total"] <= MAX_OPS_PER_ITERATION


def ops_suite(
    presets: Sequence[str],
    variants: Sequence[str],
    solvers: Sequence[str] = SOLVERS,
    batch_size: int | None = None,
    seq_len: int = SEQ_LEN,
    max_iter: int = EVAL_MAX_ITER,
    seed: int = 0,
    compile_backend: str = "inductor",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One row per preset, solver and variant (a variant this engine lacks gives a ``skipped`` row)."""
    rows = []
    for preset in presets:
        for solver in solvers:
            for variant in variants:
                reason = unavailable(variant)
                if reason is not None:
                    rows.append({"preset": preset, "solver": solver, "variant": variant, "skipped": reason})
                    continue
                model_type = family(preset)
                batch = batch_size or BATCH[model_type]
                row = profile_solve(preset, solver, variant, batch, seq_len, max_iter, seed, compile_backend)
                row["inputs"] = f"{batch} x {seq_len} tokens" if model_type != "mdeq" else f"{batch} images"
                row["target_met"] = target_met(row)
                rows.append(row)
                each, further = row["per_eval"]["total"], row["per_iteration"]["total"]
                echo(
                    f"  counted {preset} / {solver} / {variant}: {each:.1f} ops per evaluation, {further:.1f} steady"
                )
    return rows


def ops_lines(rows: list[dict[str, Any]], max_iter: int = EVAL_MAX_ITER) -> list[str]:
    """The table of ``ops_suite``'s rows and its notes."""

    def fmt(figures: dict, key: str) -> str:
        return "-" if figures[key] is None else f"{figures[key]:.1f}"

    cells = []
    for row in rows:
        head = [row["preset"], row["solver"], row["variant"]]
        if "skipped" in row:
            cells.append([*head, *("-" * 8), row["skipped"]])
            continue
        met = row["target_met"]
        target = "" if met is None else f"<= {MAX_OPS_PER_ITERATION}: {'met' if met else 'MISSED'}"
        each, further = row["per_eval"], row["per_iteration"]
        cells.append(
            [
                *head,
                str(row["nfev"]),
                fmt(each, "inside_f"),
                fmt(each, "outside_f"),
                fmt(each, "total"),
                fmt(each, "host_syncs"),
                fmt(further, "outside_f"),
                fmt(further, "total"),
                fmt(further, "host_syncs"),
                target,
            ]
        )
    headers = ["preset", "solver", "variant", "nfev", "in f", "outside f", "total", "syncs"]
    headers += ["outside f, steady", "total, steady", "syncs, steady", "target (steady)"]
    return [
        f"### Operators per evaluation of f (eval forward, {max_iter} evaluations, tol {EVAL_TOL:g})",
        "",
        table(headers, cells),
        "",
        f"- in f / outside f / total / syncs: counts over a solve of {max_iter} evaluations divided by nfev (the "
        f"solve's one-off setup spread over them); steady: the extra counts of a {2 * max_iter}-evaluation solve "
        "per extra evaluation (what one more iteration dispatches). Counted with torch.profiler inside the DEQ "
        "call: top-level ATen operators plus compiled-region calls and the ATen ops inductor leaves outside its "
        "kernels; syncs: is_nonzero / item / _local_scalar_dense. compile_solve fuses f into the step: totals only. "
        f"Target: <= {MAX_OPS_PER_ITERATION} per iteration, f included, for Anderson and Broyden with "
        "compile_solve.",
    ]
