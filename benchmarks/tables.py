"""Markdown tables of the suites' rows (``suites``) and of the target checks (``targets``).

Columns that compare with torchdeq are dropped when torchdeq was not run.
"""

from __future__ import annotations

import json
from pathlib import Path

from .engines import FWD_MAX_ITER, FWD_TOL, GRAD_MAX_ITER, GRAD_TOL, MEMORY_BUDGETS


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def render(headers: list[str], rows: list[list[str]], compared: bool) -> str:
    """A table, without the comparison columns when torchdeq is not being compared."""
    if not compared:
        keep = [i for i, h in enumerate(headers) if "torchdeq" not in h]
        headers, rows = [headers[i] for i in keep], [[r[i] for i in keep] for r in rows]
    return table(headers, rows)


def forward_lines(cell: str, result: dict, compared: bool) -> list[str]:
    headers = ["solver", "library", "solve ms", "nfev", "f ms (in solve)", "solve ms excl. f"]
    headers += [
        "overhead/eval (% of f)",
        "rel residual",
        "peak MiB",
        "ours/torchdeq",
        "ours/torchdeq excl. f",
    ]
    rows = [
        [
            r["solver"],
            r["library"],
            fmt(r["solve_ms"]),
            str(r["nfev"]),
            fmt(r["f_ms_in_solve"]),
            fmt(r["solve_excl_f_ms"]),
            f"{r['overhead_pct']:+.0f}%",
            fmt(r["rel_residual"], ".1e") + ("" if r["reached_tol"] else " (missed)"),
            fmt(r["peak_mib"]),
            fmt_ratio(r["time_vs_torchdeq"]),
            fmt_ratio(r["excl_f_vs_torchdeq"]),
        ]
        for r in result["rows"]
    ]
    return [
        f"### {cell}: forward solve (rel tol {FWD_TOL:g}, max_iter {FWD_MAX_ITER}, no autograd)",
        "",
        render(headers, rows, compared),
        "",
        f'- f timed alone at z*: {fmt(result["f_alone_ms"])} ms. "f ms (in solve)" is the mean time of one f call '
        "inside the solve; the overhead is (solve time - time inside f) / time inside f, median over repeats. The "
        "last column compares the solvers' own time (solve minus time inside f), which load on the machine "
        "disturbs less than the total.",
    ]


def estimator_lines(cell: str, result: dict, compared: bool) -> list[str]:
    headers = ["estimator", "library", "backward ms", "J^T v products", "backward passes through f"]
    headers += ["bwd rel residual", "train-step peak MiB", "ours/torchdeq"]
    rows = [
        [
            r["estimator"],
            r["library"],
            fmt(r["backward_ms"]),
            "-" if r["jtv_products"] is None else str(r["jtv_products"]),
            str(r["backward_passes"]),
            "-" if r["backward_rel_residual"] is None else f"{r['backward_rel_residual']:.1e}",
            fmt(r["train_step_peak_mib"]),
            fmt_ratio(r["time_vs_torchdeq"]),
        ]
        for r in result["rows"]
    ]
    lines = [
        f"### {cell}: gradient estimators (backward = attach + loss.backward from a fixed z*; "
        f"grad tol {GRAD_TOL:g} rel, grad max_iter {GRAD_MAX_ITER})",
        "",
        render(headers, rows, compared),
        "",
    ]
    for pair, ratio in result["ratios"].items():
        num, den = pair.split(" / ")
        lines.append(f"- backward({num}) / backward({den}) = {fmt_ratio(ratio)}")
    faster, converged = result["their_faster_ift"], result["their_converged_ift"]
    if faster is not None:
        lines.append(f"- torchdeq's faster ift: {faster}")
    if converged is not None:
        lines.append(
            f"- {faster} stopped at its budget without reaching {GRAD_TOL:g}; {converged} is torchdeq's faster ift "
            "that converged"
        )
    return lines


def memory_lines(cell: str, result: dict, compared: bool) -> list[str]:
    headers = ["estimator", "library", *(f"peak MiB, max_iter {b}" for b in MEMORY_BUDGETS), "change"]
    rows = [
        [
            r["estimator"],
            r["library"],
            *(fmt(r["peak_mib_by_max_iter"][str(b)]) for b in MEMORY_BUDGETS),
            "n/a" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%",
        ]
        for r in result["rows"]
    ]
    return [
        f"### {cell}: training-step peak memory vs forward budget (Anderson forward, tol 0 so the whole "
        "budget runs)",
        "",
        render(headers, rows, compared),
    ]


def target_lines(rows: list[dict]) -> list[str]:
    def verdict(met: bool | None) -> str:
        return "n/a" if met is None else ("met" if met else "MISSED")

    cells = [[r["cell"], r["target"], r["measured"], verdict(r["met"])] for r in rows]
    return ["## Targets (this run)", "", table(["cell", "target", "measured", "verdict"], cells)]


def write_results(path: str | Path, results: dict) -> None:
    """Write a benchmark's results as JSON (strict: no NaN), creating the folder; say where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(f"results written to {path}")
