"""The DEQ fields every hf_deq model config shares and their validation (docs/design.md, "Config fields")."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from transformers import GenerationConfig, PreTrainedConfig

from .deq_fields import (  # noqa: F401  (MAX_*, BUDGET_ALLOWED, _is_*: re-exported for the model families)
    BUDGET_ALLOWED,
    DEQ_FIELDS,
    MAX_GRAD_STEPS,
    MAX_SOLVER_ITER,
    DEQConfigError,
    _is_finite_number,
    _is_int,
    _is_number,
    check_deq_values,
    deq_values,
    field_names,
)


class MisspelledConfigFieldError(DEQConfigError):
    """A keyword that is not a field of the config but a near-miss of one (``solver_maxiter`` for
    ``solver_max_iter``) of the config class ``config_name``. ``field`` is the keyword as given, ``value`` its
    value, ``suggestion`` the field it probably meant."""

    def __init__(self, config_name: str, field: str, value: Any, suggestion: str) -> None:
        self.field, self.value, self.suggestion = field, value, suggestion
        self.allowed = f"a field of {config_name}, such as {suggestion!r}"
        ValueError.__init__(
            self,
            f"{config_name} has no field {field!r} (given {field}={value!r}); did you mean {suggestion!r}?",
        )


#: How close (``difflib`` ratio) an unknown keyword must be to a field to be taken for a misspelling of it:
#: ``solver_maxiter`` / ``solver_max_iter`` is 0.97, ``grad_step`` / ``grad_steps`` 0.95, while unrelated
#: transformers keys stay below (``sep_token_id`` / ``pad_token_id`` is 0.83).
MISSPELLING_CUTOFF = 0.85

#: Keys that ``PreTrainedConfig`` consumes or stores without declaring them as fields.
_TRANSFORMERS_KEYS = frozenset(
    {
        "torch_dtype",
        "name_or_path",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "per_layer_config",
        "rope_scaling",
        "num_labels",
        "return_unused_kwargs",
        "gguf_file",
    }
)


#: The keys that set a classifier's labels: given any of ``num_labels`` / ``id2label``, they replace all three.
LABEL_KEYS = ("num_labels", "id2label", "label2id")


def _same_word(a: str, b: str) -> bool:
    """Whether two words of a field name mean the same: equal, one a shortening of the other (``tol`` /
    ``tolerance``, ``iter`` / ``iters``), or difflib-close."""
    short, long = sorted((a, b), key=len)
    if len(short) >= 3 and long.startswith(short):
        return True
    return difflib.SequenceMatcher(None, a, b).ratio() >= MISSPELLING_CUTOFF


def _same_words(key: str, name: str) -> bool:
    """Whether ``key`` and ``name`` have as many ``_``-separated words, at least one equal and each pair the same
    (``_same_word``): ``solver_tolerance`` for ``solver_tol``, whose whole-name ratio is only 0.77."""
    words, others = key.lower().split("_"), name.split("_")
    if len(words) != len(others) or len(words) < 2 or not any(a == b for a, b in zip(words, others)):
        return False
    return all(_same_word(a, b) for a, b in zip(words, others))


def near_miss(key: str, names: Iterable[str]) -> str | None:
    """The name of ``names`` that ``key`` probably misspells: the difflib-closest one above
    ``MISSPELLING_CUTOFF``, else the only one with the same words (``_same_words``); ``None`` when none is."""
    names = list(names)
    match = difflib.get_close_matches(key, names, n=1, cutoff=MISSPELLING_CUTOFF)
    if match:
        return match[0]
    same = [name for name in names if _same_words(key, name)]
    return same[0] if len(same) == 1 else None


def _field_names(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]


def reject_misspelled_fields(config_class: type, keys: Mapping[str, Any]) -> None:
    """Raise ``MisspelledConfigFieldError`` for the first key of ``keys`` that is no field of ``config_class``
    but is difflib-close (``MISSPELLING_CUTOFF``) to one. Other unknown keys are left alone: transformers
    stores them as attributes (constructor) or returns them as unused (``from_pretrained``)."""
    fields = _field_names(config_class)
    known = set(fields) | _TRANSFORMERS_KEYS
    for key, value in keys.items():
        if not isinstance(key, str) or key in known or key.startswith("_") or hasattr(config_class, key):
            continue
        match = near_miss(key, fields)
        if match and key not in GenerationConfig._get_default_generation_params():
            raise MisspelledConfigFieldError(config_class.__name__, key, value, match)


#: The DEQ fields as dataclass fields, one per row of ``DEQ_FIELDS``: ``DEQConfig`` inherits them (transformers
#: makes every config class a dataclass, collecting the fields of its dataclass bases).
DEQFieldsMixin = dataclasses.make_dataclass(
    "DEQFieldsMixin",
    [(f.name, f.annotation, dataclasses.field(default=f.default)) for f in DEQ_FIELDS],
    kw_only=True,
    repr=False,
    eq=False,
)


class DEQConfig(PreTrainedConfig, DEQFieldsMixin):
    """Base config of DEQ models: the solver and the gradient estimator are plain fields.

    The fields below (``DEQ_FIELDS``) are run-time knobs, like ``use_cache`` in transformers: an edit of
    ``model.config`` (``model.config.solver_eval_max_iter = 3``) takes effect at the model's next forward, and an
    invalid value raises ``DEQConfigError`` naming the field at that forward, before anything is computed;
    ``save_pretrained`` refuses to write an invalid config. A keyword that is no field but a near-miss of one
    (``solver_maxiter``), given to the constructor, ``create_config`` / ``create_model`` or ``from_pretrained``,
    raises ``MisspelledConfigFieldError`` (a ``DEQConfigError``) naming the field it probably meant; other unknown
    keys are kept as attributes (constructor) or returned unused (``from_pretrained``), as in transformers.

    Non-convergence: every output reports each sample's ``solver_residual`` and ``solver_nstep``. A sample that
    misses ``solver_tol`` within its budget counts as a failed solve (``hf_deq.deq.failed_samples``) only when its
    residual is not finite; or is above ``1000 * solver_tol`` (with ``solver_stop_mode="rel"``: or above 0.5,
    where the zero initial state has 1); or is above ``100 * solver_tol`` while the second half of the budget
    brought no improvement (its best iterate came within the first half of the evaluations: the solve stalled,
    oscillated or diverged). A failed solve is warned about once per layer, raised as ``DEQConvergenceError`` or
    ignored, by ``solver_on_failure``; a solve that was still converging when its budget ran out (a small
    training budget, as phantom-gradient recipes use) is only reported.

    The fields, their defaults and allowed values are the rows of ``hf_deq.deq_fields.DEQ_FIELDS`` (listed below).
    """

    model_type = ""

    def __post_init__(self, **kwargs):
        reject_misspelled_fields(type(self), kwargs)  # kwargs holds only the keys that are not fields
        self._check_label_count(kwargs.get("num_labels"))
        super().__post_init__(**kwargs)
        self.validate_deq_fields()

    def _check_label_count(self, num_labels: Any) -> None:
        """Refuse a ``num_labels`` that contradicts ``id2label`` (transformers would let ``num_labels`` replace
        the named labels with ``LABEL_i``)."""
        if num_labels is None or self.id2label is None or num_labels == len(self.id2label):
            return
        raise DEQConfigError(
            type(self).__name__,
            "num_labels",
            num_labels,
            f"{len(self.id2label)}, the number of labels in id2label ({list(self.id2label.values())[:5]}...), "
            "or num_labels without id2label",
        )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """``PreTrainedConfig.from_dict`` where keyword arguments (``from_pretrained(path, solver_max_iter=5)``)
        that name fields of this config are passed to the constructor, so they are validated like any field
        (``DEQConfigError``), and a near-miss of a field (``solver_maxiter``) raises
        ``MisspelledConfigFieldError``; other keys stay unused, as in transformers."""
        own = set(_field_names(cls)) - set(_field_names(PreTrainedConfig))
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        saved, count = config_dict.get("id2label"), kwargs.get("num_labels")
        # Labels given at load time (another id2label, or another number of them) replace the saved ones.
        if "id2label" in overrides or (count is not None and len(saved or ()) != count):
            config_dict = {k: v for k, v in config_dict.items() if k not in LABEL_KEYS}
            overrides.update({k: kwargs.pop(k) for k in LABEL_KEYS if k in kwargs})
        reject_misspelled_fields(cls, kwargs)
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    def check_fields(self) -> None:
        """Raise ``DEQConfigError`` naming the first invalid field: every field is checked as when this config
        is built (or loaded) from its saved form, e.g. after fields were assigned directly."""
        type(self).from_dict(self.to_dict())

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """``PreTrainedConfig.save_pretrained`` that refuses (``DEQConfigError``) to write an invalid config."""
        self.check_fields()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    #: Field names of the solver / estimator groups (``set_solver`` / ``set_grad_estimator``), from the table.
    SOLVER_FIELDS = field_names("solver")
    GRAD_FIELDS = field_names("gradient")
    #: Every field read at run time: a change to one of them takes effect at the model's next forward.
    DEQ_FIELDS = tuple(f.name for f in DEQ_FIELDS)

    def __setattr__(self, key: str, value: Any) -> None:
        """Assignment checked where the value is written (constructor, ``from_pretrained`` and edits of
        ``model.config`` alike): a name that is no attribute but a near-miss of a field
        (``config.solver_maxiter = 3``) raises ``MisspelledConfigFieldError``, and a value of the wrong type for a
        DEQ field (``solver_max_iter = 8.0``, ``compile_cell = 0``, ``jacobian_reg_weight = False``: values that
        compare equal to valid ones, so the forward would not notice the edit) raises ``DEQConfigError``; the
        ranges and choices are checked at the next forward (``validate_deq_fields``), as several fields depend on
        each other."""
        field = _TYPED_FIELDS.get(key)
        if field is not None:
            if not field.has_type(value):
                raise DEQConfigError(type(self).__name__, key, value, field.type_words())
        elif key not in object.__getattribute__(self, "__dict__") and not hasattr(type(self), key):
            reject_misspelled_fields(type(self), {key: value})
        super().__setattr__(key, value)

    def _error(self, field: str, allowed: str) -> DEQConfigError:
        return DEQConfigError(type(self).__name__, field, getattr(self, field), allowed)

    def validate_deq_fields(self) -> None:
        """Raise ``DEQConfigError`` (a ``ValueError``) naming the first invalid DEQ field."""
        check_deq_values(deq_values(self), type(self).__name__)


def _fields_doc() -> str:
    rows = [
        f"        {f.name} (``{f.annotation}``, default ``{f.default!r}``): {f.help}." for f in DEQ_FIELDS
    ]
    return "\n    Args:\n" + "\n".join(rows) + "\n"


DEQConfig.__doc__ += _fields_doc()

#: The DEQ fields whose type is checked where a value is written (``DEQConfig.__setattr__``). Strings are left to
#: the forward's check of their choices (no other value compares equal to a string, so that check always runs).
_TYPED_FIELDS = {f.name: f for f in DEQ_FIELDS if f.type is not str}

__all__ = [
    "DEQConfig",
    "DEQConfigError",
    "MisspelledConfigFieldError",
    "near_miss",
    "reject_misspelled_fields",
]
