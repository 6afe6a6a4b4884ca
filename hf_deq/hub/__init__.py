"""Publishing hf_deq models on the Hugging Face Hub: model cards, a self-contained remote-code bundle, pushing.

One concept per module:

- ``errors``: ``HubPushError``, ``InvalidRepoIdError``, ``ModelDirError``, ``BundleError``, ``check_repo_id``;
- ``registry``: ``CardFacts``, what a card needs to know about a model family, declared in the model layer by the
  family's own package (``hf_deq/models/<family>/hub_card.py``); the Hub code never branches on a ``model_type``;
- ``model_dir``: a saved model folder: its checks (at once, before the Hub is contacted) and what is read from it;
- ``remote_code``: ``build_remote_code_bundle``, the family's modules and the engine modules they import,
  generated from the installed sources so a pushed repo loads with ``trust_remote_code=True`` without hf_deq;
- ``solver_stats``: solver statistics at evaluation, from ``all_results.json`` or measured;
- ``card_sections`` / ``model_card``: ``render_model_card`` from the templates in ``model_cards/``;
- ``push``: ``push_model_dir`` / ``push_model``, staged in a temporary folder and uploaded in one commit;
- ``cli``: ``HubArguments`` / ``check_hub_args`` / ``push_from_args`` for the training scripts.

``register_publisher`` (run by ``import hf_deq``) makes ``model.push_to_hub`` publish through ``push_model``: the
model layer owns the hook (``hf_deq.modeling_deq.set_publisher``) and never imports this package. The names below
are loaded on first use, so ``import hf_deq`` loads none of the publishing code; ``huggingface_hub`` itself is imported only inside the functions that call it (it
reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` when first imported).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule defining it
_EXPORTS = {
    "BundleError": "errors",
    "HubPushError": "errors",
    "InvalidRepoIdError": "errors",
    "ModelDirError": "errors",
    "check_repo_id": "errors",
    "CardFacts": "registry",
    "CardMetric": "registry",
    "get_card_facts": "registry",
    "register_card_facts": "registry",
    "registered_model_types": "registry",
    "unregister_card_facts": "registry",
    "GENERATED_MARKER": "model_dir",
    "check_model_dir": "model_dir",
    "missing_local_model_dir": "model_dir",
    "is_generated_card": "model_dir",
    "read_metrics": "model_dir",
    "read_training_info": "model_dir",
    "read_training_record": "model_dir",
    "TRAINING_RECORD_FILE": "model_dir",
    "RemoteCodeBundle": "remote_code",
    "build_remote_code_bundle": "remote_code",
    "measure_solver_stats": "solver_stats",
    "probe_inputs": "solver_stats",
    "TEMPLATE_DIRS": "model_card",
    "find_template_dir": "model_card",
    "render_model_card": "model_card",
    "validate_model_card": "model_card",
    "push_model": "push",
    "push_model_dir": "push",
    "push_staged_folder": "push",
    "stage_model_dir": "push",
    "HubArguments": "cli",
    "check_hub_args": "cli",
    "hub_repo_id": "cli",
    "push_from_args": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _publish(model: Any, repo_id: str, **options: Any) -> str:
    """``push_model`` looked up at each call (so a replaced ``hf_deq.hub.push_model`` is the one used)."""
    return importlib.import_module(__name__).push_model(model, repo_id, **options)


def register_publisher() -> None:
    """Make ``push_to_hub`` of every hf_deq model publish through ``push_model`` (model card + remote code).
    Idempotent; ``import hf_deq`` calls it."""
    from ..modeling_deq import set_publisher

    set_publisher(_publish)
