"""The DEQ fields every hf_deq model config shares and their validation (docs/design.md, "Config fields")."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from transformers import GenerationConfig, PreTrainedConfig

from .deq import available_grad_estimators, available_solvers, get_solver, normalize_name
from .deq.core import FAILURE_MODES, GRAD_CONFIG_FIELDS, grad_estimator_from_fields
from .deq.solvers import SOLVERS
from .deq.solvers.base import STOP_MODES


class DEQConfigError(ValueError):
    """A config field holds a value outside its allowed range or choices: ``config_name`` (the config class),
    ``field``, the ``value`` given and what is ``allowed``, all named in the message."""

    def __init__(self, config_name: str, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{config_name}.{field}={value!r} is invalid: expected {allowed}")


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


#: Upper bound of the solver budgets (``solver_max_iter``, ``solver_eval_max_iter``, ``grad_max_iter``): DEQ
#: solves converge in tens of iterations; one that needs more than this has no usable fixed point, and a larger
#: budget only runs for hours (``10**12`` would never end).
MAX_SOLVER_ITER = 10_000
#: Upper bound of ``grad_steps``: the phantom / unrolled estimators keep the graph of every step, so memory grows
#: linearly with it (the paper uses k <= 10).
MAX_GRAD_STEPS = 1_000
BUDGET_ALLOWED = f"an integer in [1, {MAX_SOLVER_ITER}] (a solve that needs more has no usable fixed point)"


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


class DEQConfig(PreTrainedConfig):
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

    Args:
        solver: forward solver, one of ``available_solvers()`` (``"anderson"``, ``"broyden"``, ``"fixed_point"``).
        solver_kwargs: hyperparameters of the solver, e.g. ``{"memory": 5}``.
        solver_max_iter: forward budget in training.
        solver_eval_max_iter: forward budget in eval mode (``None``: ``solver_max_iter``).
        solver_tol: stop when every sample's residual is below this.
        solver_stop_mode: ``"rel"`` (``||f(z)-z|| / ||f(z)||``) or ``"abs"``.
        solver_on_failure: ``"warn"`` (once), ``"raise"`` or ``"ignore"`` when a solve fails (see above).
        grad_estimator: ``"implicit"``, ``"upg"``, ``"npg"``, ``"one_step"``, ``"unrolled"`` or a registered name.
        grad_steps: ``k`` of UPG/NPG, unrolled steps of ``"unrolled"``.
        grad_damping: ``lambda`` of UPG/NPG, in ``(0, 1]``.
        grad_solver: backward solver of ``"implicit"`` (``"gmres"`` by default: the backward problem is linear).
        grad_max_iter: backward budget of ``"implicit"`` (``J^T v`` products).
        grad_tol: backward tolerance of ``"implicit"``.
        jacobian_reg_weight: weight of the Jacobian regularisation term added to the loss (0 = off).
        compile_cell: evaluate the cell ``f`` through ``torch.compile`` in the solve and in the backward
            (compiled once per input shape; ``DEQFixedPoint(compile_cell=True)``).
        compile_solve: run each solver iteration (``f``, the solver's update, the residuals, the stop test) as
            one compiled step, and compile the cell in the backward (``DEQFixedPoint(compile_solve=True)``).
    """

    model_type = ""

    solver: str = "anderson"
    solver_kwargs: dict[str, Any] | None = None
    solver_max_iter: int = 30
    solver_eval_max_iter: int | None = None
    solver_tol: float = 1e-3
    solver_stop_mode: str = "rel"
    solver_on_failure: str = "warn"
    compile_cell: bool = False
    compile_solve: bool = False
    grad_estimator: str = "upg"
    grad_steps: int = 5
    grad_damping: float = 0.5
    grad_solver: str = "gmres"
    grad_max_iter: int = 30
    grad_tol: float = 1e-6
    jacobian_reg_weight: float = 0.0

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

    # Field names of the solver / estimator groups, for set_solver / set_grad_estimator.
    SOLVER_FIELDS = (
        "solver",
        "solver_kwargs",
        "solver_max_iter",
        "solver_eval_max_iter",
        "solver_tol",
        "solver_stop_mode",
        "solver_on_failure",
        "compile_cell",
        "compile_solve",
    )
    GRAD_FIELDS = ("grad_estimator", *GRAD_CONFIG_FIELDS.values())
    #: Every field read at run time: a change to one of them takes effect at the model's next forward.
    DEQ_FIELDS = (*SOLVER_FIELDS, *GRAD_FIELDS, "jacobian_reg_weight")

    def __setattr__(self, key: str, value: Any) -> None:
        """Assignment checked where the value is written (constructor, ``from_pretrained`` and edits of
        ``model.config`` alike): a name that is no attribute but a near-miss of a field
        (``config.solver_maxiter = 3``) raises ``MisspelledConfigFieldError``, and a value of the wrong type for a
        DEQ field (``solver_max_iter = 8.0``, ``compile_cell = 0``, ``jacobian_reg_weight = False``: values that
        compare equal to valid ones, so the forward would not notice the edit) raises ``DEQConfigError``; the
        ranges and choices are checked at the next forward (``validate_deq_fields``), as several fields depend on
        each other."""
        expected = _DEQ_FIELD_TYPES.get(key)
        if expected is not None:
            is_valid, allowed = expected
            if not is_valid(value):
                raise DEQConfigError(type(self).__name__, key, value, allowed)
        elif key not in object.__getattribute__(self, "__dict__") and not hasattr(type(self), key):
            reject_misspelled_fields(type(self), {key: value})
        super().__setattr__(key, value)

    def _error(self, field: str, allowed: str) -> DEQConfigError:
        return DEQConfigError(type(self).__name__, field, getattr(self, field), allowed)

    def validate_deq_fields(self) -> None:
        """Raise ``DEQConfigError`` (a ``ValueError``) naming the first invalid DEQ field."""
        forward_solvers = [n for n in available_solvers() if not SOLVERS.get_class(n).affine_only]
        if not isinstance(self.solver, str) or normalize_name(self.solver) not in forward_solvers:
            raise self._error("solver", f"one of {forward_solvers}")
        if self.solver_kwargs is not None and not isinstance(self.solver_kwargs, dict):
            raise self._error("solver_kwargs", "a dict of solver hyperparameters or None")
        if self.solver_kwargs:
            try:  # the solver's own checks (unknown hyperparameters, out-of-range values), at construction
                get_solver(self.solver, **self.solver_kwargs)
            except (TypeError, ValueError) as err:
                raise self._error(
                    "solver_kwargs", f"hyperparameters that solver {self.solver!r} accepts ({err})"
                ) from err
        if not _is_int(self.solver_max_iter) or not 1 <= self.solver_max_iter <= MAX_SOLVER_ITER:
            raise self._error("solver_max_iter", BUDGET_ALLOWED)
        if self.solver_eval_max_iter is not None and (
            not _is_int(self.solver_eval_max_iter) or not 1 <= self.solver_eval_max_iter <= MAX_SOLVER_ITER
        ):
            raise self._error("solver_eval_max_iter", f"None or {BUDGET_ALLOWED}")
        if not _is_finite_number(self.solver_tol) or not self.solver_tol >= 0:
            raise self._error("solver_tol", "a finite number >= 0")
        if self.solver_stop_mode not in STOP_MODES:
            raise self._error("solver_stop_mode", f"one of {list(STOP_MODES)}")
        if self.solver_on_failure not in FAILURE_MODES:
            raise self._error("solver_on_failure", f"one of {list(FAILURE_MODES)}")
        if not isinstance(self.compile_cell, bool):
            raise self._error("compile_cell", "True or False")
        if not isinstance(self.compile_solve, bool):
            raise self._error("compile_solve", "True or False")
        estimators = available_grad_estimators()
        if not isinstance(self.grad_estimator, str) or normalize_name(self.grad_estimator) not in estimators:
            raise self._error("grad_estimator", f"one of {estimators}")
        if not _is_int(self.grad_steps) or not 1 <= self.grad_steps <= MAX_GRAD_STEPS:
            raise self._error(
                "grad_steps", f"an integer in [1, {MAX_GRAD_STEPS}] (every step keeps its graph in memory)"
            )
        if not _is_number(self.grad_damping) or not 0 < self.grad_damping <= 1:
            raise self._error("grad_damping", "a number in (0, 1]")
        if (
            not isinstance(self.grad_solver, str)
            or normalize_name(self.grad_solver) not in available_solvers()
        ):
            raise self._error("grad_solver", f"one of {available_solvers()}")
        if not _is_int(self.grad_max_iter) or not 1 <= self.grad_max_iter <= MAX_SOLVER_ITER:
            raise self._error("grad_max_iter", BUDGET_ALLOWED)
        if not _is_finite_number(self.grad_tol) or not self.grad_tol >= 0:
            raise self._error("grad_tol", "a finite number >= 0")
        try:  # a registered estimator's own checks of its hyperparameters
            grad_estimator_from_fields(
                self.grad_estimator, **{f: getattr(self, f) for f in self.GRAD_FIELDS[1:]}
            )
        except (TypeError, ValueError) as err:
            raise self._error(
                "grad_estimator", f"an estimator whose hyperparameters accept the grad_* fields ({err})"
            ) from err
        if not _is_finite_number(self.jacobian_reg_weight) or not self.jacobian_reg_weight >= 0:
            raise self._error("jacobian_reg_weight", "a finite number >= 0")


#: The type of each annotation of a DEQ field: its test and how an error says it. Strings are left to the
#: forward's check of their choices (no other value compares equal to a string, so that check always runs).
_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an integer"),
    "int | None": (lambda v: v is None or _is_int(v), "an integer or None"),
    "float": (_is_number, "a number (int or float, not a bool)"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "dict[str, Any] | None": (
        lambda v: v is None or isinstance(v, dict),
        "a dict of solver hyperparameters or None",
    ),
}
#: The DEQ fields whose type is checked at assignment (``DEQConfig.__setattr__``): field -> (test, words).
_DEQ_FIELD_TYPES = {
    f.name: _TYPE_CHECKS[f.type]
    for f in dataclasses.fields(DEQConfig)
    if f.name in DEQConfig.DEQ_FIELDS and f.type != "str"
}

__all__ = [
    "DEQConfig",
    "DEQConfigError",
    "MisspelledConfigFieldError",
    "near_miss",
    "reject_misspelled_fields",
]
