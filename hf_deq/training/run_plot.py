"""A picture of a training run: training loss, evaluation metric, solver steps, residual and (when probed with
``--probe_steps``) gradient alignment over the optimizer steps, as ``<run folder>/training_curves.png``.

The loop draws it at the end of training; ``scripts/plot_run.py --run_dir DIR`` draws it from any run folder (a
finished run's ``history.json`` / ``log_history.json``, else the ``trainer_state.json`` of a checkpoint folder or
of the newest checkpoint in it: a run still going, or one that stopped). matplotlib (a dev dependency) draws it
with its Agg backend; without matplotlib the loop skips the picture with one log line."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..hub.model_dir import TRAINING_CURVES_FILE
from .checkpoints import HISTORY_FILE, LOG_HISTORY_FILE, STATE_FILE, list_checkpoints
from .evaluation import EVAL_KEYS


class RunPlotError(ValueError):
    """A folder holds no run history this module can read; the message names the folder and what it lacks."""


def _read_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunPlotError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise RunPlotError(f"{path}: expected a list of objects, got {type(data).__name__}")
    return data


def read_run(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(history, log_history)`` of the run in ``run_dir``: the evaluations and the training logs (a run saved
    before ``log_history`` existed has none). Raises ``RunPlotError`` when the folder holds neither a finished
    run nor a checkpoint."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunPlotError(f"{run_dir}: no such folder")
    if (folder / HISTORY_FILE).is_file() or (folder / LOG_HISTORY_FILE).is_file():
        history = _read_list(folder / HISTORY_FILE) if (folder / HISTORY_FILE).is_file() else []
        logs = folder / LOG_HISTORY_FILE
        return history, _read_list(logs) if logs.is_file() else []
    checkpoints = [p for p in list_checkpoints(folder) if (p / STATE_FILE).is_file()]
    state_dir = folder if (folder / STATE_FILE).is_file() else (checkpoints[-1] if checkpoints else None)
    if state_dir is None:
        raise RunPlotError(
            f"{run_dir} holds no training run: no {HISTORY_FILE} or {LOG_HISTORY_FILE} (a finished run), no "
            f"{STATE_FILE} (a checkpoint) and no checkpoint folder"
        )
    from .state import TrainingState, TrainingStateError

    try:
        state = TrainingState.read(state_dir)
    except TrainingStateError as err:
        raise RunPlotError(str(err)) from None
    return state.history, state.log_history


def _series(entries: Sequence[dict[str, Any]], key: str, positive: bool = False) -> tuple[list, list]:
    """``(steps, values)`` of the entries that hold a finite number under ``key`` (``positive``: above 0)."""
    steps, values = [], []
    for entry in entries:
        value, step = entry.get(key), entry.get("step")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(step, int):
            continue
        if math.isfinite(value) and (value > 0 or not positive):
            steps.append(step)
            values.append(value)
    return steps, values


def task_metrics(history: Sequence[dict[str, Any]]) -> list[str]:
    """The ``eval_*`` keys of ``history`` that are the task's metric (not loss, counts or solver statistics)."""
    shared = set(EVAL_KEYS) | {"eval_solver_nstep_max"}
    keys = dict.fromkeys(k for entry in history for k in entry if k.startswith("eval_") and k not in shared)
    return list(keys)


#: one curve of a panel: ``(label, entries, key, positive)`` (``positive``: only values above 0 are drawn)
Curve = tuple[str, Sequence[dict[str, Any]], str, bool]
#: one panel of the picture: ``(title, curves, log_scale)``
Panel = tuple[str, list[Curve], bool]


def curve_panels(history: Sequence[dict[str, Any]], log_history: Sequence[dict[str, Any]]) -> list[Panel]:
    """The panels of the picture of ``history`` (evaluations) and ``log_history`` (training logs): loss, the
    task's metric, solver steps, residual and, when recorded, gradient alignment and spectral radius."""
    panels: list[Panel] = [
        ("loss", [("train", log_history, "train_loss", False), ("eval", history, "eval_loss", False)], False),
        (
            "evaluation metric",
            [(k.removeprefix("eval_"), history, k, False) for k in task_metrics(history)],
            False,
        ),
        (
            "solver steps (mean per sample)",
            [("train", log_history, "solver_nstep", False), ("eval", history, "eval_solver_nstep", False)],
            False,
        ),
        (
            "solver residual (mean)",
            [
                ("train", log_history, "solver_residual", True),
                ("eval", history, "eval_solver_residual", True),
            ],
            True,
        ),
    ]
    if any("grad_alignment_cosine" in entry for entry in log_history):
        alignment: list[Curve] = [
            ("cosine", log_history, "grad_alignment_cosine", False),
            ("relative error", log_history, "grad_alignment_relative_error", False),
        ]
        panels.append(("gradient alignment with the exact gradient", alignment, False))
    if any("spectral_radius_max" in entry for entry in log_history):
        radius: list[Curve] = [
            ("mean", log_history, "spectral_radius_mean", False),
            ("max", log_history, "spectral_radius_max", False),
        ]
        panels.append(("spectral radius of df/dz", radius, False))
    return panels


def _draw_panel(ax, panel: Panel) -> None:
    """Draw ``panel`` on the axes ``ax`` ("not recorded" when none of its curves has a value)."""
    from matplotlib.ticker import MaxNLocator

    name, curves, log_scale = panel
    drawn = 0
    for label, entries, key, positive in curves:
        steps, values = _series(entries, key, positive=positive)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
            drawn += 1
    if drawn and log_scale:
        ax.set_yscale("log")
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_training_curves(
    history: Sequence[dict[str, Any]],
    log_history: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Draw the run's curves (``curve_panels``) into the PNG ``path`` (raises ``ImportError`` without
    matplotlib); returns it."""
    import matplotlib

    matplotlib.use("Agg")  # no display; a no-op when already chosen
    import matplotlib.pyplot as plt

    panels = curve_panels(history, log_history)
    rows = math.ceil(len(panels) / 2)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw_panel(ax, panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return path


def write_training_curves(
    output_dir: str | os.PathLike,
    history: Sequence[dict[str, Any]],
    log_history: Sequence[dict[str, Any]],
    title: str | None = None,
    log: Callable[[str], None] = print,
) -> Path | None:
    """The loop's end-of-training picture, ``<output_dir>/training_curves.png``; without matplotlib one ``log``
    line says it was skipped and ``None`` is returned."""
    try:
        return plot_training_curves(history, log_history, Path(output_dir) / TRAINING_CURVES_FILE, title)
    except ImportError:
        log(
            f"matplotlib is not installed: {TRAINING_CURVES_FILE} skipped (pip install matplotlib, then "
            f"scripts/plot_run.py --run_dir {output_dir})"
        )
        return None


def run_title(run_dir: str | os.PathLike) -> str:
    """The picture's title: the folder's name, with the estimator and solver of its ``all_results.json``."""
    from ..hub.model_dir import read_json

    results = read_json(Path(run_dir) / "all_results.json") or {}
    parts = [f"{k} {results[k]}" for k in ("grad_estimator", "solver") if results.get(k)]
    name = Path(run_dir).resolve().name
    return f"{name} ({', '.join(parts)})" if parts else name


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw the run in ``run_dir`` into ``output`` (default ``<run_dir>/training_curves.png``); returns the path.
    ``RunPlotError`` when the folder holds no run, ``ImportError`` without matplotlib."""
    history, log_history = read_run(run_dir)
    if not history and not log_history:
        raise RunPlotError(f"{run_dir}: the run recorded no evaluation and no training log yet")
    target = Path(output) if output is not None else Path(run_dir) / TRAINING_CURVES_FILE
    return plot_training_curves(history, log_history, target, run_title(run_dir))


__all__ = [
    "RunPlotError",
    "curve_panels",
    "plot_run",
    "plot_training_curves",
    "read_run",
    "run_title",
    "task_metrics",
    "write_training_curves",
]
