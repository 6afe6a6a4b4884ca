"""What the Hub model card says about a model family, declared by the family's own package.

A family (``hf_deq/models/<family>/hub_card.py``) declares one ``CardFacts`` for its ``model_type`` and registers
it when ``hf_deq.models.register_models`` runs; the Hub layer (``hf_deq.hub``) reads them, and the model layer
never imports the Hub layer. This module imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CardMetric:
    """One evaluation result on the card: the ``all_results.json`` key it is read from, its model-index metric
    ``type`` and its display ``name``; ``headline`` metrics go into the card's ``metrics:`` metadata."""

    key: str
    type: str
    name: str
    headline: bool = True


@dataclass(frozen=True)
class CardFacts:
    """How one model family is described on the Hub.

    - ``model_type``: the family's ``config.model_type``, the registry key; ``description``: one line on the card;
    - ``template``: the card template (``*.md.jinja``), looked up in ``template_dir`` (the family's own folder, if
      given) and then in hf_deq's ``model_cards/`` (which holds the shared partials ``_deq.md.jinja`` ...);
    - ``pipeline_tag`` / ``task_name``: the Hub task; ``auto_class``: the ``transformers`` Auto class that loads
      the task model (used to load a saved model when its solver statistics must be measured);
    - ``metrics``: the evaluation results the card reports, headline first;
    - ``probe_inputs(config, num_samples, generator)``: keyword inputs for measuring solver statistics when no
      evaluation data is at hand;
    - ``builtin_datasets``: ``{name: description}`` for the dataset names the family's training script loads
      without the Hub (e.g. ``digits``); any other ``dataset_name`` is a Hub id or a local file;
    - ``citations``: ``(bibtex key, heading)`` pairs: which entries of ``_citations.md.jinja`` the card shows;
    - ``tags``: Hub tags added to the card's metadata.
    """

    model_type: str
    template: str
    pipeline_tag: str
    task_name: str
    auto_class: str
    description: str
    metrics: tuple[CardMetric, ...]
    probe_inputs: Callable[[Any, int, Any], Mapping[str, Any]]
    builtin_datasets: Mapping[str, str] = field(default_factory=dict)
    citations: tuple[tuple[str, str], ...] = (
        ("geng2021training", "Phantom gradients (the training method)"),
        ("bai2019deep", "Deep equilibrium models"),
    )
    tags: tuple[str, ...] = ()
    template_dir: str | os.PathLike | None = None


_FAMILIES: dict[str, CardFacts] = {}


def register_card_facts(facts: CardFacts) -> CardFacts:
    """Register (or replace) the card facts of ``facts.model_type``; returns ``facts``."""
    if not isinstance(facts, CardFacts):
        raise TypeError(f"register_card_facts takes a CardFacts, got {type(facts).__name__}")
    _FAMILIES[facts.model_type] = facts
    return facts


def unregister_card_facts(model_type: str) -> None:
    """Forget the card facts of the family ``model_type`` (for tests and plug-ins that register temporarily)."""
    _FAMILIES.pop(model_type, None)


def registered_model_types() -> list[str]:
    """The ``model_type`` of every family with card facts, sorted."""
    return sorted(_FAMILIES)


def registered_card_facts(model_type: str) -> CardFacts | None:
    """The card facts registered for ``model_type``, or ``None``."""
    return _FAMILIES.get(model_type)
