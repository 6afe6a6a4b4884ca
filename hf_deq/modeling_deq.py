"""What every hf_deq ``PreTrainedModel`` shares: the config's solver and estimator fields as run-time knobs,
safetensors-only loading, and ``push_to_hub`` through the publisher the Hub layer registers (``set_publisher``)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import json
import operator
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.utils import parametrize

from .configuration_deq import DEQConfig, DEQConfigError, MisspelledConfigFieldError, near_miss
from .deq import DEQFixedPoint, get_solver, remove_norm
from .deq_fields import (
    DEQ_FIELD_NAMES,
    ESTIMATOR_HYPERPARAMETER_FIELDS,
    deq_values,
    engine_kwargs,
    field_names,
)

_deq_fields_of_dict = operator.itemgetter(*DEQ_FIELD_NAMES)
_deq_fields_of_config = operator.attrgetter(*DEQ_FIELD_NAMES)
#: ``set_grad_estimator``'s short names (the estimator arguments) of the gradient fields: ``steps`` -> ``grad_steps``.
_GRAD_SHORT_NAMES = {f.engine_arg: f.name for f in ESTIMATOR_HYPERPARAMETER_FIELDS}


def _deq_field_values(config: DEQConfig) -> tuple:
    """The run-time DEQ fields of ``config`` as one tuple, read at every forward. They are plain instance
    attributes, so they are read from the instance dict at C speed (``PreTrainedConfig.__getattribute__`` is
    Python code, ~1 us per attribute); a config that keeps one elsewhere is read attribute by attribute."""
    try:
        return _deq_fields_of_dict(object.__getattribute__(config, "__dict__"))
    except KeyError:
        return _deq_fields_of_config(config)


#: The keywords of a forward (and of ``generate``) that set the solver budget of that call only, each named like the
#: config field whose value it replaces for the call, and the ``DEQFixedPoint.budget_override`` argument it becomes.
SOLVER_BUDGET_KEYWORDS = {
    "solver_max_iter": "max_iter",
    "solver_eval_max_iter": "eval_max_iter",
    "solver_tol": "tol",
}


class SolverBudgetError(DEQConfigError):
    """A per-call solver budget keyword (``model(..., solver_eval_max_iter=0)``) holds an invalid value."""

    def __init__(self, keyword: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = keyword, value, allowed
        ValueError.__init__(
            self, f"{keyword}={value!r} is invalid for this call's solver budget: expected {allowed}"
        )


def accepts_solver_budget(forward: Callable) -> Callable:
    """Decorate a DEQ model's ``forward`` so that it takes the ``SOLVER_BUDGET_KEYWORDS`` (keyword-only, default
    ``None``: the config's value) and runs inside ``self.solver_budget(...)``: ``model(x, solver_eval_max_iter=4)``
    solves with that budget for this call only. They are in the forward's signature, so ``generate`` accepts them
    and passes them to every forward of its loop."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if kwargs.keys().isdisjoint(SOLVER_BUDGET_KEYWORDS):
            return forward(self, *args, **kwargs)
        budget = {key: kwargs.pop(key) for key in SOLVER_BUDGET_KEYWORDS if key in kwargs}
        with self.solver_budget(**budget):
            return forward(self, *args, **kwargs)

    signature = inspect.signature(forward)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None) for key in SOLVER_BUDGET_KEYWORDS
    ]
    params += [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    wrapper.__signature__ = signature.replace(parameters=params)
    return wrapper


#: weight files that are Python pickles: loading one can run arbitrary code
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


def _unsafe_index_files(index_path: str | os.PathLike) -> list[str]:
    """The files the safetensors index at ``index_path`` maps weights to that are not ``.safetensors`` files
    beside it (a ``.bin`` pickle, a path out of the folder); ``["not a readable index ..."]`` for a bad index."""
    try:
        with open(index_path, encoding="utf-8") as f:
            files = set(json.load(f)["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ["not a readable index with a weight_map"]
    unsafe = []
    for file in sorted(map(str, files)):
        inside = os.path.basename(file) == file and file not in ("", ".", "..")
        if not (inside and file.endswith(".safetensors")):
            unsafe.append(file)
    return unsafe


def unsafe_index_entries(folder: str | os.PathLike) -> list[str]:
    """``"index: file"`` for each weight file that a ``*.safetensors.index.json`` of ``folder`` maps a weight to
    and that is not a ``.safetensors`` file inside ``folder`` (a ``.bin`` pickle, a path out of the folder), or
    for an index that cannot be read: ``from_pretrained`` would read those files. Empty when every index is safe."""
    return [
        f"{name}: {file}"
        for name in sorted(os.listdir(folder))
        if name.endswith(".safetensors.index.json")
        for file in _unsafe_index_files(os.path.join(folder, name))
    ]


#: the ``from_pretrained`` keywords that say where a Hub repo's files come from
_HUB_FILE_KWARGS = (
    "cache_dir",
    "force_download",
    "proxies",
    "local_files_only",
    "token",
    "revision",
    "subfolder",
)


def _with_variant(name: str, variant: str | None) -> str:
    """transformers' weight file names of a ``variant``: ``model.safetensors`` -> ``model.fp16.safetensors``."""
    if not variant:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def _refuse_pickled_hub_shards(repo_id: str, kwargs: dict[str, Any]) -> None:
    """For a Hub id: when the repo has no single ``model.safetensors``, the safetensors index ``from_pretrained``
    follows must map every weight to a safetensors file (both are fetched into the cache the load then reads)."""
    from transformers.utils import cached_file

    options = {k: kwargs[k] for k in _HUB_FILE_KWARGS if kwargs.get(k) is not None}
    options.update(
        _raise_exceptions_for_gated_repo=False,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    variant = kwargs.get("variant")
    if cached_file(repo_id, _with_variant("model.safetensors", variant), **options) is not None:
        return
    index = cached_file(repo_id, _with_variant("model.safetensors.index.json", variant), **options)
    if index is not None and (unsafe := _unsafe_index_files(index)):
        raise OSError(
            f"{repo_id}'s safetensors index maps weights to files that are not safetensors files "
            f"({', '.join(unsafe)}): hf_deq models load safetensors weights only, because unpickling can execute "
            "arbitrary code"
        )


def _refuse_pickled_weights(path: Any, subfolder: str = "") -> None:
    """Raise ``OSError`` when the local ``path`` would make ``from_pretrained`` read pickled weights."""
    if path is None:
        return
    path = os.path.join(str(path), subfolder) if subfolder else str(path)
    if os.path.isfile(path):
        if not path.endswith(SAFE_WEIGHT_SUFFIXES):
            raise OSError(
                f"{path} is not a safetensors file: hf_deq models load safetensors weights only (pickled "
                "PyTorch weights can execute arbitrary code when loaded)"
            )
        return
    if not os.path.isdir(path):
        return  # a Hub id: from_pretrained is called with use_safetensors=True
    names = os.listdir(path)
    explicit = None
    if "config.json" in names:
        try:
            with open(os.path.join(path, "config.json")) as f:
                explicit = json.load(f).get("transformers_weights")
        except (OSError, ValueError, AttributeError):
            explicit = None
    if explicit is not None and not str(explicit).endswith(SAFE_WEIGHT_SUFFIXES):
        raise OSError(
            f"{path}/config.json names transformers_weights={explicit!r}, which is not a safetensors file; "
            "hf_deq models load safetensors weights only"
        )
    if unsafe := unsafe_index_entries(path):
        raise OSError(
            f"{path} has a safetensors index that maps weights to files that are not safetensors files in that "
            f"folder ({', '.join(unsafe)}): hf_deq models load safetensors weights only, because unpickling can "
            "execute arbitrary code"
        )
    if not any(n.endswith(SAFE_WEIGHT_SUFFIXES) for n in names):
        pickled = sorted(n for n in names if n.endswith(PICKLED_WEIGHT_SUFFIXES))
        if pickled:
            raise OSError(
                f"{path} holds only pickled PyTorch weights ({', '.join(pickled)}) and no model.safetensors: "
                "hf_deq models load safetensors weights only, because unpickling can execute arbitrary code. "
                "If you trust the file, convert it once: load the state dict with torch.load(..., "
                "weights_only=True), then model.save_pretrained(...) writes model.safetensors."
            )


def _reject_near_misses(config: DEQConfig, keys: dict[str, Any], allowed: list[str]) -> None:
    """Raise ``MisspelledConfigFieldError`` for the first key of ``keys`` that is a near-miss of a name in
    ``allowed`` (``solver_maxiter`` for ``solver_max_iter``)."""
    for key, value in keys.items():
        if match := near_miss(key, allowed):
            raise MisspelledConfigFieldError(type(config).__name__, key, value, match)


#: Marks a weight-normalised layer of an hf_deq model (set by ``DEQModelMixin.post_init``).
_NORMALISED_WEIGHT_TAG = "_hf_deq_normalised_weight"


def _refuse_adapter_on_normalised_weight(parent: torch.nn.Module, name: str, child: Any) -> None:
    """Global module-registration hook: refuse (``ValueError``) a peft tuner layer (LoRA, ...) wrapping a
    weight-normalised layer of an hf_deq model. peft merges an adapter with ``base_layer.weight.data += delta``;
    a weight-normalised ``weight`` is recomputed from ``g`` and ``v`` at each access, so ``merge_and_unload`` would
    silently drop the adapter and return a different model."""
    base = getattr(child, "base_layer", None)
    if (
        isinstance(base, torch.nn.Module)
        and base.__dict__.get(_NORMALISED_WEIGHT_TAG)
        and parametrize.is_parametrized(base, "weight")
    ):
        raise ValueError(
            f"cannot add a {type(child).__name__} adapter to {type(parent).__name__}.{name}: its weight is "
            "weight-normalised (w = g v / ||v||, recomputed at every access), so peft's merge_and_unload would "
            "drop the adapter and give a different model. Call model.remove_weight_norm() before get_peft_model "
            "or PeftModel.from_pretrained (the frozen base weights need no normalisation; the model computes the "
            "same function)."
        )


torch.nn.modules.module.register_module_module_registration_hook(_refuse_adapter_on_normalised_weight)


#: ``publisher(model, repo_id, *, processing_class, private, commit_message, token) -> url``: what
#: ``DEQModelMixin.push_to_hub`` publishes with. The model layer owns this hook point and never imports the Hub
#: layer; ``hf_deq.hub.register_publisher`` (run by ``import hf_deq``) sets it.
Publisher = Callable[..., str]
_PUBLISHER: Publisher | None = None


def set_publisher(publisher: Publisher | None) -> None:
    """Make ``push_to_hub`` of every hf_deq model publish with ``publisher`` (``None``: transformers' upload)."""
    global _PUBLISHER
    if publisher is not None and not callable(publisher):
        raise TypeError(f"set_publisher takes a callable or None, got {type(publisher).__name__}")
    _PUBLISHER = publisher


class DEQModelMixin:
    """Mixin for ``PreTrainedModel`` subclasses holding ``DEQFixedPoint`` layers built with ``from_config``.

    The DEQ fields of ``model.config`` (``DEQConfig.DEQ_FIELDS``: solver, budgets, tolerance, estimator, ...) are
    run-time knobs, like ``use_cache`` in transformers: a model whose forward starts with
    ``self._sync_deq_config()`` applies an edit of them at its next forward, or raises ``DEQConfigError`` naming
    the field before computing anything. ``set_solver`` / ``set_grad_estimator`` are validated shortcuts."""

    config: DEQConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained`` restricted to safetensors weights: a folder (or Hub repo) with only
        pickled weights (``pytorch_model.bin``) raises ``OSError`` instead of being unpickled, and
        ``use_safetensors=False`` or ``gguf_file`` raise ``ValueError``."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "hf_deq models load safetensors weights only; use_safetensors=False (pickled weights) is refused"
            )
        if kwargs.get("gguf_file") is not None:
            raise ValueError("hf_deq models load safetensors weights only; gguf_file is not supported")
        _refuse_pickled_weights(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if pretrained_model_name_or_path is not None and not os.path.exists(
            str(pretrained_model_name_or_path)
        ):
            _refuse_pickled_hub_shards(str(pretrained_model_name_or_path), kwargs)
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except OSError as err:
            if "cannot be loaded with `safetensors`" not in str(err):
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} has no model.safetensors: hf_deq models load safetensors weights "
                "only (pickled weights such as pytorch_model.bin can execute arbitrary code when loaded)"
            ) from err

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = None,
        tags: list[str] | None = None,
        processing_class: Any = None,
    ) -> str:
        """``PreTrainedModel.push_to_hub`` through the registered publisher (``set_publisher``; ``import hf_deq``
        registers ``hf_deq.hub.push_model``: hf_deq's model card with solver statistics measured on probe inputs,
        and the remote code that loads the repo where hf_deq is not installed); ``processing_class`` (tokenizer or
        image processor) is uploaded with it.

        ``commit_description``, ``revision``, ``create_pr``, ``tags`` and ``max_shard_size`` exist only in
        transformers' own upload: with any of them, or with no publisher registered (a model loaded as remote
        code), that upload is used instead (transformers' card, no bundled code)."""
        transformers_only = (
            bool(commit_description or revision or create_pr or tags) or max_shard_size is not None
        )
        if _PUBLISHER is not None and not transformers_only:
            return _PUBLISHER(
                self,
                repo_id,
                processing_class=processing_class,
                private=bool(private),
                commit_message=commit_message,
                token=token,
            )
        options = {"commit_message": commit_message, "private": private, "token": token, "revision": revision}
        options["create_pr"] = create_pr
        if processing_class is not None:
            processing_class.push_to_hub(repo_id, **options)
        if max_shard_size is not None:
            options["max_shard_size"] = max_shard_size
        return super().push_to_hub(repo_id, commit_description=commit_description, tags=tags, **options)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` that refuses (``DEQConfigError``, nothing written) to save a model
        whose config holds an invalid value, e.g. one assigned directly to ``model.config``."""
        self.config.check_fields()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def remove_weight_norm(self) -> None:
        """Bake every weight-normalised weight ``w = g * v / ||v||`` into a plain parameter (the model computes the
        same function) and set ``config.weight_norm = False``, so that a saved copy reloads without it.

        Call it before adding LoRA adapters (``peft``) to a model with weight norm: the frozen base weights need no
        re-normalisation, and peft's ``merge_and_unload`` adds the adapters to plain weights only (it would leave a
        weight-normalised layer unchanged), so an adapter on a weight-normalised layer is refused (``ValueError``)."""
        remove_norm(self)
        if hasattr(self.config, "weight_norm"):
            self.config.weight_norm = False

    def deq_layers(self) -> list[DEQFixedPoint]:
        return [m for m in self.modules() if isinstance(m, DEQFixedPoint)]

    @contextlib.contextmanager
    def solver_budget(
        self,
        *,
        solver_max_iter: int | None = None,
        solver_eval_max_iter: int | None = None,
        solver_tol: float | None = None,
    ) -> Iterator[None]:
        """Run the forwards of the ``with`` block with these solver budgets (``None``: the config's), as if the
        config fields of those names held them; ``model.config`` is not touched and later calls run with its
        budget again. A bad value raises ``SolverBudgetError`` (a ``DEQConfigError``) naming the keyword, checked
        as the config field is. What the forward keywords and ``generate(..., solver_eval_max_iter=4)`` use; a
        pipeline that refuses unknown keywords (image classification) runs inside it."""
        given = {
            key: value
            for key, value in zip(SOLVER_BUDGET_KEYWORDS, (solver_max_iter, solver_eval_max_iter, solver_tol))
            if value is not None
        }
        if not given:
            yield
            return
        self._sync_deq_config()  # an edit of the config made before this call applies, under the override
        applied = self.__dict__.get("_deq_fields_applied")
        checked = (applied, tuple((key, type(value), value) for key, value in given.items()))
        if self.__dict__.get("_budget_checked") != checked:  # generate: checked at its first forward only
            self._check_budget_keywords(given)
            self.__dict__["_budget_checked"] = checked
        try:
            with contextlib.ExitStack() as stack:
                for layer in self.deq_layers():
                    override = {SOLVER_BUDGET_KEYWORDS[key]: value for key, value in given.items()}
                    stack.enter_context(layer.budget_override(**override))
                yield
        finally:
            if self.__dict__.get("_deq_fields_applied") is not applied:  # the config was edited inside
                for layer in self.deq_layers():
                    layer.reconfigure(**engine_kwargs(deq_values(self.config)))

    def _check_budget_keywords(self, given: dict[str, Any]) -> None:
        """Check per-call budget values with the config fields' own checks, on a copy of the config."""
        trial = copy.copy(self.config)
        for key, value in given.items():
            try:
                setattr(trial, key, value)
            except DEQConfigError as err:
                raise SolverBudgetError(key, value, err.allowed) from None
        try:
            trial.validate_deq_fields()
        except DEQConfigError as err:
            if err.field not in given:
                raise
            raise SolverBudgetError(err.field, err.value, err.allowed) from None

    def post_init(self) -> None:
        super().post_init()
        self._remember_deq_fields()
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                module.__dict__[_NORMALISED_WEIGHT_TAG] = True

    def _remember_deq_fields(self) -> None:
        """Record the DEQ field values the layers now run with, on this model and its DEQ submodels."""
        values = copy.deepcopy(_deq_field_values(self.config))  # a copy: solver_kwargs may be edited in place
        for module in self.modules():
            if isinstance(module, DEQModelMixin):
                module._deq_fields_applied = values

    def _sync_deq_config(self) -> None:
        """Apply edits of ``self.config``'s DEQ fields to the DEQ layers; called first in ``forward``.

        With an unchanged config this is one tuple comparison. After an edit, the config's DEQ fields are
        validated (``DEQConfigError`` naming the field, before any computation) and every layer is rebuilt from
        them, once."""
        values = _deq_field_values(self.config)
        if values == self.__dict__.get("_deq_fields_applied"):
            return
        self.config.validate_deq_fields()
        for layer in self.deq_layers():
            layer.reconfigure(**engine_kwargs(deq_values(self.config)))
        self._remember_deq_fields()

    def _apply_deq_fields(self, fields: dict[str, Any]) -> None:
        """Validate ``fields`` on a copy of the config, then write them and rebuild every DEQ layer."""
        trial = copy.deepcopy(self.config)
        for key, value in fields.items():
            if not hasattr(trial, key):
                raise TypeError(f"{type(self.config).__name__} has no field {key!r}")
            setattr(trial, key, value)
        trial.validate_deq_fields()
        DEQFixedPoint(
            **engine_kwargs(deq_values(trial))
        )  # the engine's own checks, should a registered class add any
        for key, value in fields.items():
            setattr(self.config, key, value)
        for layer in self.deq_layers():
            layer.reconfigure(**engine_kwargs(deq_values(self.config)))
        self._remember_deq_fields()

    def set_grad_estimator(self, name: str, **fields: Any) -> None:
        """Switch the gradient estimator, e.g. ``set_grad_estimator("npg", grad_steps=8, grad_damping=0.5)``
        or ``set_grad_estimator("implicit", grad_max_iter=40)``; short names (``steps``, ``damping``,
        ``solver``, ``max_iter``, ``tol``) are accepted too. The keywords are the gradient group of the field
        table, checked with the config's own check. Updates ``model.config``."""
        updates: dict[str, Any] = {"grad_estimator": name}
        for key, value in fields.items():
            updates[_GRAD_SHORT_NAMES.get(key, key)] = value
        bad = sorted(set(updates) - set(field_names("gradient")))
        if bad:
            hyperparameter_fields = list(_GRAD_SHORT_NAMES.values())
            allowed = [*hyperparameter_fields, *_GRAD_SHORT_NAMES]
            _reject_near_misses(self.config, {key: fields.get(key) for key in bad}, allowed)
            raise TypeError(f"set_grad_estimator got {bad}; it takes {hyperparameter_fields}")
        self._apply_deq_fields(updates)

    def set_solver(self, name: str, **fields: Any) -> None:
        """Switch the forward solver, e.g. ``set_solver("broyden", solver_max_iter=40, memory=10)``: keys
        named like config fields (``solver_max_iter``, ``solver_tol``, ...) set those fields, any other key
        is a hyperparameter of the solver (``solver_kwargs``). The field keywords are the solver group of the
        field table, checked with the config's own check. Updates ``model.config``."""
        updates: dict[str, Any] = {"solver": name}
        hyper = {k: v for k, v in fields.items() if k not in field_names("solver")}
        updates.update({k: v for k, v in fields.items() if k in field_names("solver")})
        if hyper:
            try:
                get_solver(name, **hyper)
            except TypeError:
                # an unknown hyperparameter: a near-miss of a field says which, else as Python does
                fields_of_config = [f.name for f in dataclasses.fields(self.config)]
                _reject_near_misses(self.config, hyper, fields_of_config)
                raise
            except ValueError:
                pass  # a bad value or solver name: the config check below names the field
        if hyper or "solver_kwargs" not in updates:
            updates["solver_kwargs"] = {**(updates.get("solver_kwargs") or {}), **hyper} or None
        self._apply_deq_fields(updates)


__all__ = ["SOLVER_BUDGET_KEYWORDS", "DEQModelMixin", "SolverBudgetError", "accepts_solver_budget"]
