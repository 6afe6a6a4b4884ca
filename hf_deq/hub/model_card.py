"""The model card (README.md of a Hub repo): rendered from the family's template in ``model_cards/`` with the
config, the run's ``all_results.json``, the training recipe and the solver statistics, and its metadata checked
with ``huggingface_hub``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..deq_fields import phantom_gradient_estimators
from . import card_sections as sections
from .budget_sweep import BUDGET_SWEEP_PLOT, budget_sweep_card
from .card_text import Markup, card_value, escape_card_text
from .errors import HubPushError, InvalidRepoIdError, check_repo_id
from .model_dir import (
    GENERATED_MARKER,
    SECRET_KEYS,
    TRAINING_CURVES_FILE,
    check_model_dir,
    read_metrics,
    read_training_info,
)
from .registry import CardFacts, get_card_facts
from .solver_stats import collect_solver_stats, number

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: the templates live in ``model_cards/`` at the repository root (a source checkout or editable install) and
#: ship inside the wheel as ``hf_deq/model_cards/``; ``HF_DEQ_MODEL_CARDS`` overrides both
TEMPLATE_DIRS = (_PACKAGE_ROOT / "model_cards", _PACKAGE_ROOT.parent / "model_cards")
#: a template every family's card includes: how a template folder is recognised
SHARED_TEMPLATE = "_deq.md.jinja"


def find_template_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder of the model-card templates: ``override``, else ``$HF_DEQ_MODEL_CARDS``, else the installed or
    checked-out ``model_cards/``."""
    chosen = override or os.environ.get("HF_DEQ_MODEL_CARDS")
    candidates = [Path(chosen)] if chosen else list(TEMPLATE_DIRS)
    for folder in candidates:
        if (folder / SHARED_TEMPLATE).is_file():
            return folder
    raise HubPushError(
        f"model-card templates not found in {', '.join(str(c) for c in candidates)}; set HF_DEQ_MODEL_CARDS to "
        "the repository's model_cards/ folder or pass template_dir"
    )


def _template_env(facts: CardFacts, template_dir: str | os.PathLike | None):
    """Templates are looked up in the family's own folder (if it registered one), then in hf_deq's."""
    import jinja2

    folders = [str(find_template_dir(template_dir))]
    if facts.template_dir is not None:
        folders.insert(0, str(facts.template_dir))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=card_value,  # every {{ value }} escaped, unless the card built it (Markup)
    )


def _tags(facts: CardFacts, config) -> list[str]:
    estimator = sections.estimator_name(config)
    tags = ["deq", "implicit-model", "deep-equilibrium", "hf_deq", *facts.tags]
    if estimator in phantom_gradient_estimators():
        tags.insert(2, "phantom-gradient")
    return [*tags, f"solver-{config.solver}", f"grad-{estimator.replace('_', '-')}", "custom_code"]


def _card_data(facts: CardFacts, config, model_name: str, dataset: dict, results: list, license: str | None):
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = [
        EvalResult(
            task_type=facts.pipeline_tag,
            task_name=facts.task_name,
            dataset_type=escape_card_text(dataset["type"], markdown=False),
            dataset_name=escape_card_text(dataset["name"], markdown=False),
            dataset_config=dataset["config"] and escape_card_text(dataset["config"], markdown=False),
            dataset_split=dataset["split"],
            metric_type=r["type"],
            metric_name=r["name"],
            metric_value=r["value"],
        )
        for r in results
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=facts.pipeline_tag,
        license=license,
        tags=_tags(facts, config),
        datasets=[dataset["id"]] if dataset["id"] else None,
        metrics=sorted({r["type"] for r in results if r["headline"]}) or None,
        model_name=escape_card_text(model_name, markdown=False),
        eval_results=eval_results or None,
    )


def _num_parameters(config, facts: CardFacts, model: torch.nn.Module | None, metrics: Mapping[str, Any]):
    """The model's parameter count (``count_parameters``: parameters only, never buffers such as BatchNorm
    statistics; a tied weight once): of ``model``, else of the family's model built from ``config`` on the meta
    device (no memory, no weights read), else the run's recorded ``num_parameters``."""
    import transformers

    from ..modeling_utils import count_parameters

    if model is None:
        try:
            with torch.device("meta"):
                model = getattr(transformers, facts.auto_class).from_config(config)
        except Exception:  # a config the installed classes cannot build: fall back to the run's count
            model = None
    if model is not None:
        return count_parameters(model)
    recorded = number(metrics.get("num_parameters"))
    return int(recorded) if recorded is not None else None


def _code_repo_id(repo_id: str) -> str:
    """``repo_id`` for the card's code snippets (verbatim text): a valid Hub id as it is (letters, digits,
    ``-_./`` only), anything else (a folder's name) escaped."""
    try:
        return Markup(check_repo_id(repo_id))
    except InvalidRepoIdError:
        return escape_card_text(repo_id)


def render_model_card(
    model_dir: str | os.PathLike | None = None,
    *,
    model: torch.nn.Module | None = None,
    config=None,
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    solver_stats: Mapping[str, Any] | None = None,
    eval_inputs: Iterable[Mapping[str, torch.Tensor]] | None = None,
    license: str | None = "apache-2.0",
    template_dir: str | os.PathLike | None = None,
    validate: bool = True,
) -> str:
    """Render the model card (README.md text) of an hf_deq model.

    Sources, each optional where another gives it: ``model_dir`` (a local saved model: ``config.json``,
    ``all_results.json``, a training-info JSON, the weights; a folder that does not exist raises
    ``ModelDirError`` at once), ``model`` and ``config`` (in memory), ``metrics`` (overrides
    ``all_results.json``), ``training`` (the recipe, e.g. ``vars(args)`` of a training script). Solver
    statistics at evaluation come from ``solver_stats``, else the metrics (``eval_solver_nstep`` ...), else from
    running the model in eval mode on ``eval_inputs`` (or, lacking them, on the family's random probe inputs;
    the card says which). What the card says about the family (template, task, metrics, built-in datasets)
    comes from its registered ``CardFacts``. With ``validate`` the metadata is parsed back with
    ``huggingface_hub.ModelCard``. ``repo_id`` names the repo in the card's title and loading snippet,
    ``license`` goes into the metadata, and ``template_dir`` is searched for templates before hf_deq's
    ``model_cards/``.
    """
    import transformers

    from .. import __version__
    from ..models import register_models

    register_models()  # the model types AutoConfig resolves
    if model_dir is not None:
        check_model_dir(model_dir, need_weights=False)
    if config is None:
        if model is not None:
            config = model.config
        elif model_dir is not None:
            config = transformers.AutoConfig.from_pretrained(model_dir)
        else:
            raise ValueError("render_model_card needs model_dir, model or config")
    facts = get_card_facts(config.model_type)
    metrics = dict(metrics if metrics is not None else (read_metrics(model_dir) if model_dir else {}))
    training = dict(
        training if training is not None else (read_training_info(model_dir) if model_dir else {})
    )
    training = {k: v for k, v in training.items() if not SECRET_KEYS.search(k)}

    stats, model = collect_solver_stats(config, facts, model, model_dir, metrics, solver_stats, eval_inputs)
    num_parameters = _num_parameters(config, facts, model, metrics)

    repo_id = repo_id or (Path(model_dir).name if model_dir else f"{config.model_type}-model")
    model_name = repo_id.split("/")[-1]
    dataset = sections.dataset_info(facts, metrics, training)
    results = sections.eval_results(facts, metrics)
    card_data = _card_data(facts, config, model_name, dataset, results, license)
    stats = stats or {}
    context = {
        "card_data": Markup(card_data.to_yaml()),  # YAML written by huggingface_hub from escaped values
        "generated_marker": GENERATED_MARKER,
        "hf_deq_version": __version__,
        "install_command": sections.source_install_command(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "repo_id": _code_repo_id(repo_id),
        "model_name": model_name,
        "family": facts,
        "citations": dict(facts.citations),
        "config": config,
        "architecture_class": (getattr(config, "architectures", None) or [None])[0],
        "num_parameters": sections.fmt(num_parameters) if num_parameters is not None else "n/a",
        "num_parameters_m": f"{num_parameters / 1e6:.2f}M" if num_parameters is not None else "n/a",
        "architecture_rows": sections.architecture_rows(config),
        "solver_rows": sections.solver_rows(config),
        "estimator_rows": sections.estimator_rows(config),
        "estimator": sections.estimator_name(config),
        "phantom_estimators": phantom_gradient_estimators(),
        "solver_stats": {
            "mean": sections.fmt(number(stats.get("solver_nstep_mean")), 3),
            "max": sections.fmt(number(stats.get("solver_nstep_max")), 3),
            "residual": sections.fmt(number(stats.get("solver_residual_mean")), 3),
            "source": stats.get("source", "not measured"),
            "known": bool(stats),
        },
        "eval_max_iter": config.solver_eval_max_iter or config.solver_max_iter,
        "budget_sweep": budget_sweep_card(model_dir),
        "budget_sweep_plot": BUDGET_SWEEP_PLOT,
        "dataset": dataset,
        "results": results,
        "recipe": sections.recipe_rows(training, metrics),
        # the run's picture, pushed with the model (``PUSHED_FILE_PATTERNS``): linked when the folder has it
        "training_curves": Markup(TRAINING_CURVES_FILE)
        if model_dir is not None and (Path(model_dir) / TRAINING_CURVES_FILE).is_file()
        else None,
        "labels": list((getattr(config, "id2label", None) or {}).values())[:20],
        "num_labels": getattr(config, "num_labels", None),
    }
    content = _template_env(facts, template_dir).get_template(facts.template).render(**context)
    if validate:
        validate_model_card(content)
    return content


def validate_model_card(content: str) -> dict[str, Any]:
    """Parse the metadata of the card text ``content`` locally with ``huggingface_hub`` (``ModelCard`` / ``ModelCardData``, which also
    checks the ``model-index`` structure) and check the fields the Hub needs; returns the metadata. The server-side
    check (``/api/validate-yaml``) runs when the card is pushed."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard(content, ignore_metadata_errors=False)
    data = card.data.to_dict()
    for key in ("library_name", "pipeline_tag", "tags"):
        if not data.get(key):
            raise ValueError(f"model card metadata lacks {key!r}")
    if "model-index" in data:
        name, results = model_index_to_eval_results(data["model-index"])
        if not results:
            raise ValueError("model card model-index has no results")
    if not card.text.strip():
        raise ValueError("model card has no text")
    return data
