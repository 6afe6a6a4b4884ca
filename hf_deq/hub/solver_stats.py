"""Solver statistics at evaluation for the model card: from the run's ``all_results.json`` (``eval_solver_nstep``,
``eval_solver_nstep_max``, ``eval_solver_residual``), else measured by running the model in eval mode."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .registry import CardFacts, get_card_facts

STAT_KEYS = ("solver_nstep_mean", "solver_nstep_max", "solver_residual_mean")
#: the ``all_results.json`` key each statistic is read from
RESULT_KEYS = {
    "solver_nstep_mean": "eval_solver_nstep",
    "solver_nstep_max": "eval_solver_nstep_max",
    "solver_residual_mean": "eval_solver_residual",
}
STAT_LABELS = {
    "solver_nstep_mean": "mean steps",
    "solver_nstep_max": "max steps",
    "solver_residual_mean": "mean residual",
}


def number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@torch.no_grad()
def measure_solver_stats(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
) -> dict[str, Any]:
    """Run ``model`` in eval mode on ``batches`` (keyword inputs) and summarise its solver statistics:
    ``{"solver_nstep_mean", "solver_nstep_max", "solver_residual_mean", "num_samples"}``."""
    was_training = model.training
    model.eval()
    nsteps, residuals = [], []
    try:
        device = next(model.parameters()).device
        for batch in batches:
            out = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
            if getattr(out, "solver_nstep", None) is None:
                raise ValueError(f"{type(model).__name__} outputs carry no solver_nstep")
            nsteps.append(out.solver_nstep.detach().float().flatten().cpu())
            residuals.append(out.solver_residual.detach().float().flatten().cpu())
    finally:
        model.train(was_training)
    nstep, residual = torch.cat(nsteps), torch.cat(residuals)
    finite = residual[torch.isfinite(residual)]
    return {
        "solver_nstep_mean": float(nstep.mean()),
        "solver_nstep_max": int(nstep.max()),
        "solver_residual_mean": float(finite.mean()) if finite.numel() else float("inf"),
        "num_samples": int(nstep.numel()),
    }


def probe_inputs(config, num_samples: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` random inputs for a model of ``config``, drawn with ``seed``, for measuring solver
    statistics when no evaluation data is at hand (the family's registered ``CardFacts.probe_inputs``)."""
    generator = torch.Generator().manual_seed(seed)
    return [dict(get_card_facts(config.model_type).probe_inputs(config, num_samples, generator))]


def solver_stats_from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The statistics recorded in the run's metrics, or ``None`` when the mean step count is missing."""
    stats = {name: number(metrics.get(key)) for name, key in RESULT_KEYS.items()}
    if stats["solver_nstep_mean"] is None:
        return None
    return {**stats, "source": "the run's evaluation (all_results.json)"}


def collect_solver_stats(
    config,
    facts: CardFacts,
    model: torch.nn.Module | None,
    model_dir,
    metrics: Mapping[str, Any],
    solver_stats: Mapping[str, Any] | None,
    eval_inputs: Iterable[Mapping[str, torch.Tensor]] | None,
) -> tuple[dict[str, Any] | None, torch.nn.Module | None]:
    """Solver statistics for the card, ``(stats, model)``: given ones, else the run's metrics, and whatever is
    still missing measured by running the model (on ``eval_inputs``, else on random probe inputs; the model is
    loaded from ``model_dir`` with the family's Auto class if needed, and returned). ``source`` says where each
    number comes from."""
    import transformers

    given = dict(solver_stats) if solver_stats else (solver_stats_from_metrics(metrics) or {})
    known = {k: given[k] for k in STAT_KEYS if given.get(k) is not None}
    sources = []
    if known:
        origin = given.get("source") or "given"
        sources.append(f"{', '.join(STAT_LABELS[k] for k in known)}: {origin}")
    result: dict[str, Any] = dict(known)
    missing = [k for k in STAT_KEYS if k not in known]
    if missing and (model is not None or model_dir is not None):
        if model is None:
            model = getattr(transformers, facts.auto_class).from_pretrained(model_dir)
        inputs = list(eval_inputs) if eval_inputs is not None else probe_inputs(config)
        measured = measure_solver_stats(model, inputs)
        where = (
            f"measured on {measured['num_samples']} evaluation inputs"
            if eval_inputs is not None
            else f"measured when the card was written, on {measured['num_samples']} random probe inputs (no "
            "evaluation data was at hand; on real data the counts differ)"
        )
        sources.append(f"{', '.join(STAT_LABELS[k] for k in missing)}: {where}")
        result.update({k: measured[k] for k in missing})
    if not any(k in result for k in STAT_KEYS):
        return None, model
    result["source"] = "; ".join(sources)
    return result, model
