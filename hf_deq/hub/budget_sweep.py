"""The solver-budget sweep saved with a model (``scripts/evaluate_deq.py --budgets 2,4,8 --save_to_model_dir``):
its files, its plot (metric and time against the budget) and the model card's "how much compute at inference"
table. The files are pushed with the model; the card shows the table and the plot when they are there."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .solver_stats import number

#: the sweep's rows (``{"rows": [...], "device": ...}``) and its plot, beside the model
BUDGET_SWEEP_FILE = "budget_sweep.json"
BUDGET_SWEEP_PLOT = "budget_sweep.png"
#: what each row holds (``evaluate_deq.py``): the solver, its eval budget, the metric and loss, the mean solver
#: steps and residual, the examples evaluated and the wall time of that evaluation
ROW_KEYS = (
    "solver",
    "budget",
    "metric_name",
    "metric",
    "loss",
    "solver_nstep",
    "solver_residual",
    "num_examples",
)


def metric_text(name: str, value: float) -> str:
    """A metric as the tables show it: accuracy in percent, anything else with 3 decimals."""
    return f"{100 * value:.2f}%" if name == "accuracy" else f"{value:.3f}"


def ms_per_example(row: dict[str, Any]) -> float:
    """Wall time of the row's evaluation per example, in milliseconds."""
    return 1000.0 * row["seconds"] / max(row["num_examples"], 1)


def write_budget_sweep(model_dir: str | os.PathLike, rows: Sequence[dict[str, Any]], device: str) -> Path:
    """Write ``rows`` (and the ``device`` they were timed on) as ``BUDGET_SWEEP_FILE`` in ``model_dir``."""
    path = Path(model_dir) / BUDGET_SWEEP_FILE
    path.write_text(json.dumps({"rows": list(rows), "device": device}, indent=2) + "\n", encoding="utf-8")
    return path


def read_budget_sweep(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``{"rows": [...], "device": str, "plot": bool}`` from ``model_dir``'s ``BUDGET_SWEEP_FILE``, keeping the
    rows that hold every ``ROW_KEYS`` with a numeric metric; ``None`` when there is no usable sweep."""
    try:
        data = json.loads((Path(model_dir) / BUDGET_SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    raw = data.get("rows") if isinstance(data, dict) else None
    rows = [
        r
        for r in (raw if isinstance(raw, list) else [])
        if isinstance(r, dict) and all(k in r for k in ROW_KEYS) and number(r["metric"]) is not None
    ]
    if not rows:
        return None
    device = data.get("device")
    plot = (Path(model_dir) / BUDGET_SWEEP_PLOT).is_file()
    return {"rows": rows, "device": device if isinstance(device, str) else None, "plot": plot}


def budget_sweep_card(model_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The card's sweep section: the table rows as text, the device and whether the plot is there."""
    sweep = read_budget_sweep(model_dir) if model_dir is not None else None
    if sweep is None:
        return None

    def text(value: Any, digits: str) -> str:
        value = number(value)
        return "n/a" if value is None else format(value, digits)

    rows = []
    for r in sweep["rows"]:
        timed = number(r.get("seconds")) is not None and number(r["num_examples"])
        rows.append(
            {
                "solver": str(r["solver"]),
                "budget": str(r["budget"]),
                "metric": metric_text(str(r["metric_name"]), number(r["metric"])),
                "loss": text(r["loss"], ".4f"),
                "nstep": text(r["solver_nstep"], ".1f"),
                "residual": text(r["solver_residual"], ".2e"),
                "ms_per_example": f"{ms_per_example(r):.2f}" if timed else "n/a",
            }
        )
    metric_name = str(sweep["rows"][0]["metric_name"])
    return {"rows": rows, "metric_name": metric_name, "device": sweep["device"], "plot": sweep["plot"]}


def plot_budget_sweep(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> bool:
    """Draw the metric and the time per example against the solver budget (one line per solver) into the PNG
    ``path`` (matplotlib's Agg canvas; the global backend is left alone). ``False`` when matplotlib is not
    installed (nothing is written)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    name = rows[0]["metric_name"]
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    metric_axes, time_axes = figure.subplots(1, 2)
    for solver in dict.fromkeys(r["solver"] for r in rows):
        mine = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["budget"])
        budgets = [r["budget"] for r in mine]
        scale = 100.0 if name == "accuracy" else 1.0
        metric_axes.plot(budgets, [scale * r["metric"] for r in mine], marker="o", label=solver)
        time_axes.plot(budgets, [ms_per_example(r) for r in mine], marker="o", label=solver)
    for axes, label in (
        (metric_axes, f"{name} (%)" if name == "accuracy" else name),
        (time_axes, "ms / example"),
    ):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("solver budget (solver_eval_max_iter)")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend(title="solver")
    budgets = sorted({r["budget"] for r in rows})
    for axes in (metric_axes, time_axes):
        axes.set_xticks(budgets, [str(b) for b in budgets])
    metric_axes.set_title(f"{name} against the solver budget")
    time_axes.set_title("evaluation time against the solver budget")
    figure.savefig(path, dpi=110)
    return True
