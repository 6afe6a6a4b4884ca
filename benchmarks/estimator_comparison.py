"""The gradient-estimator comparison of ``scripts/compare_estimators.py``: the estimator recipes of each task,
the aggregation of several seeds per estimator (mean ± sample std, time per step, time to the reference's final
metric), its markdown table and its plot (metric against training wall time, with error bars).

A run is the ``results`` dict of ``hf_deq.training.train`` (``all_results.json`` plus the evaluation
``history``: one entry per evaluation with ``step``, ``train_time`` and the ``eval_*`` metrics).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the training script of each task (``hf_deq.tasks`` names)
TRAIN_SCRIPTS: dict[str, str] = {
    "image-classification": "train_mdeq_classifier.py",
    "causal-lm": "train_deq_lm.py",
}

#: the phantom-gradient paper's estimators: ``(grad_steps, grad_damping)`` of UPG/NPG per task (docs/design.md,
#: "Training recipes"): MDEQ k=5, λ=0.5; the LM the paper's k=5, λ=0.8 (``deq-transformer-wt103-upg.json``).
PHANTOM_SETTINGS: dict[str, tuple[int, float]] = {"image-classification": (5, 0.5), "causal-lm": (5, 0.8)}


#: a value within this of the target counts as reaching it (a run that ends exactly at the mean target)
BETTER_OR_EQUAL_EPS = 1e-12


@dataclass(frozen=True)
class Metric:
    """The metric an estimator comparison ranks by: its ``results`` key, its direction and how it is shown."""

    key: str
    label: str
    higher_is_better: bool
    scale: float = 1.0
    unit: str = ""
    digits: int = 3

    def show(self, value: float) -> str:
        return f"{self.scale * value:.{self.digits}f}{self.unit}"


METRICS: dict[str, Metric] = {
    "image-classification": Metric("eval_accuracy", "test accuracy (%)", True, 100.0, "%", 2),
    "causal-lm": Metric("eval_loss", "validation loss (nats/token)", False),
}


def recipes(task: str) -> dict[str, list[str]]:
    """The training flags of each estimator for ``task``: implicit, UPG(k, λ), NPG(k, λ), one-step."""
    k, lam = PHANTOM_SETTINGS[task]
    phantom = ["--grad_steps", str(k), "--grad_damping", str(lam)]
    return {
        "implicit": ["--grad_estimator", "implicit"],
        "upg": ["--grad_estimator", "upg", *phantom],
        "npg": ["--grad_estimator", "npg", *phantom],
        "one_step": ["--grad_estimator", "one_step"],
    }


def labels(task: str) -> dict[str, str]:
    """How the table and the plot name each estimator of ``recipes(task)``."""
    k, lam = PHANTOM_SETTINGS[task]
    return {
        "implicit": "implicit",
        "upg": f"UPG (k={k}, λ={lam})",
        "npg": f"NPG (k={k}, λ={lam})",
        "one_step": "one-step",
    }


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct non-negative integers (``ValueError`` otherwise)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"expected distinct non-negative integers, got {text!r}")
    return seeds


def saved_activations_mb(task, args) -> float:
    """Megabytes of tensors autograd keeps for the backward of one training forward of ``task`` with the
    training flags ``args`` (parameters excluded): what grows with UPG's unrolled steps and stays O(1) for
    implicit / NPG."""
    import torch

    from hf_deq.training import build_dataloaders

    torch.manual_seed(args.seed)
    raw = task.load_raw(args)
    model, processor = task.build_model(args, raw, None)
    train_dl, _ = build_dataloaders(args, task.load_data(args, raw, processor))
    batch = task.prepare_train_batch(next(iter(train_dl)), args)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), tensor.untyped_storage().nbytes())
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        task.training_forward(model, batch)
    return sum(seen.values()) / 2**20


# -- aggregation -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std, len(values))

    def show(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        if self.n == 0:
            return "n/a"
        mean = f"{scale * self.mean:.{digits}f}"
        if math.isnan(self.std):
            return f"{mean}{unit}"
        return f"{mean} ± {scale * self.std:.{digits}f}{unit}"


def time_to_target(history: list[dict], metric: Metric, target: float) -> float | None:
    """Training time at the first evaluation whose metric is at or better than ``target`` (no interpolation
    between evaluations: an upper bound, at the resolution of the evaluation interval); ``None`` if none is."""
    from .against_explicit import time_to_target as first_reached

    reached = first_reached(history, metric.key, target, metric.higher_is_better, eps=BETTER_OR_EQUAL_EPS)
    return None if reached is None else float(reached["first_eval_s"])


def step_times(run: dict[str, Any]) -> tuple[float, float]:
    """``(forward + backward, wall)`` seconds per optimization step: the forward and backward the loop times
    inside every step, and the whole training time (optimizer, data; no evaluation) over the steps."""
    fwd_bwd = run["forward_time_per_step"] + run["backward_time_per_step"]
    return fwd_bwd, run["train_runtime"] / max(run["train_steps"], 1)


def curve(runs: list[dict], metric: Metric) -> dict[str, list[float]]:
    """The evaluations every run made (matched by step): mean ± std of the training time and of the metric."""
    common = set.intersection(*({h["step"] for h in r["history"] if metric.key in h} for r in runs))
    out: dict[str, list[float]] = {"step": [], "time": [], "time_std": [], "value": [], "value_std": []}
    for step in sorted(common):
        entries = [next(h for h in r["history"] if h["step"] == step) for r in runs]
        time, value = Stat.of([e["train_time"] for e in entries]), Stat.of([e[metric.key] for e in entries])
        out["step"].append(step)
        out["time"].append(time.mean)
        out["time_std"].append(0.0 if math.isnan(time.std) else time.std)
        out["value"].append(value.mean)
        out["value_std"].append(0.0 if math.isnan(value.std) else value.std)
    return out


def summarize(
    runs: dict[str, list[dict]], metric: Metric, reference: str = "implicit", tolerance: float = 0.0
) -> dict[str, Any]:
    """Aggregate ``runs`` (estimator -> one results dict per seed). The target is the mean over seeds of
    ``reference``'s final metric, moved by ``tolerance`` towards worse; each run's time to it is
    ``time_to_target`` of its own history."""
    ref = runs.get(reference)
    target = None
    if ref:
        mean = statistics.fmean(r[metric.key] for r in ref)
        target = mean - tolerance if metric.higher_is_better else mean + tolerance
    ref_runtime = statistics.fmean(r["train_runtime"] for r in ref) if ref else None
    estimators: dict[str, Any] = {}
    for name, seed_runs in runs.items():
        times = [step_times(r) for r in seed_runs]
        reach = (
            [time_to_target(r["history"], metric, target) for r in seed_runs] if target is not None else []
        )
        reached = [t for t in reach if t is not None]
        estimators[name] = {
            "n": len(seed_runs),
            "final": Stat.of([r[metric.key] for r in seed_runs]),
            "fwd_bwd_per_step": Stat.of([t[0] for t in times]),
            "wall_per_step": Stat.of([t[1] for t in times]),
            "train_runtime": Stat.of([r["train_runtime"] for r in seed_runs]),
            "time_to_target": Stat.of(reached),
            "time_to_target_runs": reach,
            "reached": len(reached),
            "saved_activations_mb": seed_runs[0].get("saved_activations_mb"),
            "curve": curve(seed_runs, metric),
        }
    return {
        "metric": metric.key,
        "reference": reference,
        "target": target,
        "reference_runtime": ref_runtime,
        "estimators": estimators,
    }


def jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with every ``Stat`` as ``{"mean", "std", "n"}`` (NaN as ``None``)."""

    def convert(value):
        if isinstance(value, Stat):
            return {k: None if math.isnan(v) else v for k, v in vars(value).items() if k != "n"} | {
                "n": value.n
            }
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(summary)


# -- table and plot ----------------------------------------------------------------------------------------
def reach_cell(row: dict[str, Any], reference_runtime: float | None) -> str:
    if row["reached"] == 0:
        return "not reached"
    stat: Stat = row["time_to_target"]
    cell = stat.show(digits=0, unit=" s")
    if reference_runtime:
        cell += f" ({stat.mean / reference_runtime:.2f}x)"
    if row["reached"] < row["n"]:
        cell += f", {row['reached']}/{row['n']} runs"
    return cell


def markdown_table(summary: dict[str, Any], metric: Metric, names: dict[str, str]) -> str:
    """The comparison as a markdown table (mean ± sample std over the seeds) and its notes."""
    reference, target = summary["reference"], summary["target"]
    rows = [
        f"| estimator | n | final {metric.key} | forward+backward / step (ms) | wall time / step (ms) | "
        f"saved activations (MB) | time to `{reference}`'s final {metric.key} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["estimators"].items():
        saved = row["saved_activations_mb"]
        rows.append(
            f"| {names.get(name, name)} | {row['n']} | "
            f"{row['final'].show(metric.scale, metric.digits, metric.unit)} | "
            f"{row['fwd_bwd_per_step'].show(1000, 0)} | {row['wall_per_step'].show(1000, 0)} | "
            f"{'n/a' if saved is None else f'{saved:.1f}'} | "
            f"{'—' if target is None else reach_cell(row, summary['reference_runtime'])} |"
        )
    notes = ["", "Mean ± sample standard deviation over the n seeds."]
    if target is not None:
        notes[-1] += (
            f" Target: `{reference}`'s final {metric.key} averaged over its seeds ({metric.show(target)}); "
            "time to it: the training time of each run's first evaluation at or better than the target (not "
            f"interpolated), mean over the runs that reached it, and its ratio to `{reference}`'s mean training "
            "time; 'not reached' when no run did."
        )
    notes[-1] += (
        " Forward+backward: the forward and backward timed inside every step; wall time / step: the whole "
        "training time (optimizer, data) over the steps, evaluation and start-up excluded. Saved activations: "
        "tensors autograd keeps for the backward of one training step (parameters excluded)."
    )
    return "\n".join(rows + notes) + "\n"


def plot(summary: dict[str, Any], metric: Metric, names: dict[str, str], path: Path, title: str) -> None:
    """Metric against training wall time, one line per estimator, error bars of the seeds in both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, row in summary["estimators"].items():
        c = row["curve"]
        ax.errorbar(
            c["time"],
            [metric.scale * v for v in c["value"]],
            xerr=c["time_std"],
            yerr=[metric.scale * v for v in c["value_std"]],
            marker="o",
            markersize=3,
            capsize=2,
            label=f"{names.get(name, name)} (n={row['n']})",
        )
    if summary["target"] is not None:
        target = metric.scale * summary["target"]
        ax.axhline(
            target, color="gray", linestyle=":", linewidth=1, label=f"target: {summary['reference']}'s mean"
        )
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(metric.label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = [
    "METRICS",
    "PHANTOM_SETTINGS",
    "TRAIN_SCRIPTS",
    "Metric",
    "Stat",
    "curve",
    "jsonable",
    "labels",
    "markdown_table",
    "parse_seeds",
    "plot",
    "recipes",
    "saved_activations_mb",
    "step_times",
    "summarize",
    "time_to_target",
]
