"""The DEQ fields of every hf_deq model config, declared once (docs/design.md, "Config fields").

Each row of ``DEQ_FIELDS`` is one field: its name, value type, default, allowed values, group, the engine argument
it feeds and one line of help. Everything else derives from this table: ``DEQConfig``'s fields, their type check at
assignment and their validation, the keyword arguments of ``DEQFixedPoint`` (``engine_kwargs``; the engine never
reads a config field name), ``set_solver`` / ``set_grad_estimator``, the training scripts' flags and their help,
and the model card's rows. Adding a DEQ field is one row here plus its test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from .deq import available_grad_estimators, available_solvers, get_solver, normalize_name
from .deq.core import FAILURE_MODES, grad_estimator_from_hyperparameters
from .deq.grad import GRAD_ESTIMATORS
from .deq.registry import Registry, accepted_arguments
from .deq.solvers import SOLVERS
from .deq.solvers.base import STOP_MODES

#: The largest solver / backward budget a field accepts (a solve that needs more has no usable fixed point).
MAX_SOLVER_ITER = 10_000
#: The largest ``grad_steps`` (every step keeps its graph in memory).
MAX_GRAD_STEPS = 1_000
BUDGET_ALLOWED = f"an integer in [1, {MAX_SOLVER_ITER}] (a solve that needs more has no usable fixed point)"

#: The groups, in card order: the solve, the gradient estimator and the regulariser.
GROUPS = ("solver", "gradient", "regularization")


class DEQConfigError(ValueError):
    """A config field holds a value outside its allowed range or choices: ``config_name`` (the config class),
    ``field``, the ``value`` given and what is ``allowed``, all named in the message."""

    def __init__(self, config_name: str, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{config_name}.{field}={value!r} is invalid: expected {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


#: The value types a field can have: the test of its type (checked where a value is written) and its words.
TYPE_TESTS: dict[type, tuple[Callable[[Any], bool], str]] = {
    int: (_is_int, "an integer"),
    float: (_is_number, "a number (int or float, not a bool)"),
    bool: (lambda v: isinstance(v, bool), "True or False"),
    str: (lambda v: isinstance(v, str), "a string"),
    dict: (lambda v: isinstance(v, dict), "a dict"),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """What values a field allows beyond its type: a test and the words an error shows."""

    test: Callable[[Any], bool]
    words: str | Callable[[], str]

    def allowed(self) -> str:
        return self.words() if callable(self.words) else self.words


def integer_in(low: int, high: int, why: str = "") -> Rule:
    """An integer in ``[low, high]``."""
    return Rule(lambda v: _is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]{why}")


def finite_at_least(low: float) -> Rule:
    """A finite number ``>= low``."""
    return Rule(lambda v: _is_finite_number(v) and v >= low, f"a finite number >= {low:g}")


def number_in_open_closed(low: float, high: float) -> Rule:
    """A number in ``(low, high]``."""
    return Rule(lambda v: _is_number(v) and low < v <= high, f"a number in ({low:g}, {high:g}]")


def name_in(names: Callable[[], list[str]]) -> Rule:
    """A name (any case, ``-`` or ``_``) among ``names()``, read when checked so registrations count."""
    return Rule(lambda v: isinstance(v, str) and normalize_name(v) in names(), lambda: f"one of {names()}")


def value_in(values: tuple[str, ...]) -> Rule:
    """Exactly one of ``values``."""
    return Rule(lambda v: v in values, f"one of {list(values)}")


ANY = Rule(lambda v: True, "")


def forward_solvers() -> list[str]:
    """The registered solvers that can solve a nonlinear fixed point (not the affine-only GMRES)."""
    return [name for name in available_solvers() if not SOLVERS.get_class(name).affine_only]


@dataclasses.dataclass(frozen=True)
class DEQField:
    """One DEQ config field (see the module docstring).

    ``engine_arg`` is the ``DEQFixedPoint`` keyword it feeds; for the ``"gradient"`` group (but
    ``grad_estimator`` itself) it is the estimator's constructor argument, passed to the estimators that take it.
    ``label`` is its row label on the model card, ``registry`` the registry its value names an entry of (the card
    shows that entry's description), ``fallback`` the field whose value a ``None`` stands for.
    """

    name: str
    type: type
    default: Any
    group: str
    engine_arg: str
    help: str
    rule: Rule = ANY
    optional: bool = False
    choices: Callable[[], list[str]] | None = None
    label: str = ""
    registry: Registry | None = None
    fallback: str | None = None

    @property
    def annotation(self) -> str:
        """The annotation of the config attribute (``"int | None"``)."""
        name = "dict[str, Any]" if self.type is dict else self.type.__name__
        return f"{name} | None" if self.optional else name

    def has_type(self, value: Any) -> bool:
        """Whether ``value`` has this field's type (``None`` where optional)."""
        return (self.optional and value is None) or TYPE_TESTS[self.type][0](value)

    def type_words(self) -> str:
        words = TYPE_TESTS[self.type][1]
        return f"{words} or None" if self.optional else words

    def allowed(self) -> str:
        """The words an error shows for this field."""
        words = self.rule.allowed() if self.rule is not ANY else self.type_words()
        return f"None or {words}" if self.optional and self.rule is not ANY else words

    def is_valid(self, value: Any) -> bool:
        if self.optional and value is None:
            return True
        return self.has_type(value) and self.rule.test(value)

    def check(self, value: Any, owner: str) -> None:
        """Raise ``DEQConfigError`` naming this field, ``value`` and the allowed values."""
        if not self.is_valid(value):
            raise DEQConfigError(owner, self.name, value, self.allowed())


def _gradient(
    name: str, type_: type, default: Any, engine_arg: str, help_: str, rule: Rule, **more: Any
) -> DEQField:
    return DEQField(name, type_, default, "gradient", engine_arg, help_, rule, **more)


#: The table: one row per DEQ field, in the order of the config, the flags and the card.
DEQ_FIELDS: tuple[DEQField, ...] = (
    DEQField("solver", str, "anderson", "solver", "solver", "forward solver", name_in(forward_solvers),
             choices=forward_solvers, label="forward solver", registry=SOLVERS),
    DEQField("solver_kwargs", dict, None, "solver", "solver_kwargs",
             'hyperparameters of the solver, e.g. {"memory": 5}',
             Rule(lambda v: isinstance(v, dict), "a dict of solver hyperparameters"), optional=True,
             label="solver hyperparameters"),
    DEQField("solver_max_iter", int, 30, "solver", "max_iter", "forward budget in training",
             integer_in(1, MAX_SOLVER_ITER, " (a solve that needs more has no usable fixed point)"),
             label="max iterations (training)"),
    DEQField("solver_eval_max_iter", int, None, "solver", "eval_max_iter",
             "forward budget in eval mode (None: solver_max_iter)",
             integer_in(1, MAX_SOLVER_ITER, " (a solve that needs more has no usable fixed point)"), optional=True,
             label="max iterations (evaluation)", fallback="solver_max_iter"),
    DEQField("solver_tol", float, 1e-3, "solver", "tol", "stop when every sample's residual is below this",
             finite_at_least(0), label="tolerance"),
    DEQField("solver_stop_mode", str, "rel", "solver", "stop_mode",
             "residual measure: rel (||f(z)-z|| / ||f(z)||) or abs", value_in(STOP_MODES),
             choices=lambda: list(STOP_MODES), label="residual measure"),
    DEQField("solver_on_failure", str, "warn", "solver", "on_failure",
             "when a solve fails: warn (once), raise or ignore", value_in(FAILURE_MODES),
             choices=lambda: list(FAILURE_MODES), label="on non-convergence"),
    DEQField("compile_cell", bool, False, "solver", "compile_cell",
             "evaluate the cell f through torch.compile in the solve and the backward", label="compiled cell"),
    DEQField("compile_solve", bool, False, "solver", "compile_solve",
             "run each solver iteration as one compiled step, and compile the cell in the backward",
             label="compiled solver steps"),
    DEQField("grad_estimator", str, "upg", "gradient", "grad_estimator",
             "gradient estimator: implicit, upg, npg, one_step, unrolled or a registered name",
             name_in(available_grad_estimators), choices=available_grad_estimators, label="gradient estimator",
             registry=GRAD_ESTIMATORS),
    _gradient("grad_steps", int, 5, "steps", "k of UPG/NPG, unrolled steps of unrolled",
              integer_in(1, MAX_GRAD_STEPS, " (every step keeps its graph in memory)"), label="k (steps)"),
    _gradient("grad_damping", float, 0.5, "damping", "lambda of UPG/NPG, in (0, 1]", number_in_open_closed(0, 1),
              label="lambda (damping)"),
    _gradient("grad_solver", str, "gmres", "solver", "backward solver of implicit (the backward problem is linear)",
              name_in(available_solvers), choices=available_solvers, label="backward solver", registry=SOLVERS),
    _gradient("grad_max_iter", int, 30, "max_iter", "backward budget of implicit (J^T v products)",
              integer_in(1, MAX_SOLVER_ITER, " (a solve that needs more has no usable fixed point)"),
              label="backward max iterations"),
    _gradient("grad_tol", float, 1e-6, "tol", "backward tolerance of implicit", finite_at_least(0),
              label="backward tolerance"),
    DEQField("jacobian_reg_weight", float, 0.0, "regularization", "jacobian_reg_weight",
             "weight of the Jacobian regularisation term added to the loss (0 = off)", finite_at_least(0),
             label="Jacobian regularisation weight"),
)  # fmt: skip

FIELDS_BY_NAME: dict[str, DEQField] = {f.name: f for f in DEQ_FIELDS}
#: Every DEQ field name, in table order.
DEQ_FIELD_NAMES: tuple[str, ...] = tuple(FIELDS_BY_NAME)


def deq_field(name: str) -> DEQField:
    """The row of field ``name`` (``KeyError`` if it is no DEQ field)."""
    return FIELDS_BY_NAME[name]


def field_names(group: str) -> tuple[str, ...]:
    """The names of the fields of one group (``"solver"``, ``"gradient"`` or ``"regularization"``)."""
    return tuple(f.name for f in DEQ_FIELDS if f.group == group)


#: The gradient-group fields that are estimator hyperparameters (all but ``grad_estimator``).
ESTIMATOR_HYPERPARAMETER_FIELDS: tuple[DEQField, ...] = tuple(
    f for f in DEQ_FIELDS if f.group == "gradient" and f.name != "grad_estimator"
)


def _estimator_hyperparameters(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f.engine_arg: values[f.name] for f in ESTIMATOR_HYPERPARAMETER_FIELDS}


def estimator_fields(name: str) -> tuple[str, ...]:
    """The DEQ fields the estimator registered as ``name`` reads: the hyperparameter fields whose ``engine_arg``
    its constructor takes (``ValueError`` for an unregistered ``name``)."""
    accepted = set(accepted_arguments(GRAD_ESTIMATORS.get_class(name)))
    return tuple(f.name for f in ESTIMATOR_HYPERPARAMETER_FIELDS if f.engine_arg in accepted)


def phantom_gradient_estimators() -> list[str]:
    """The registered estimators that are phantom gradients (their class's ``phantom_gradient``), in
    registration order (``upg``, ``npg``, ``one_step``, then those registered later)."""
    return [name for name in GRAD_ESTIMATORS if GRAD_ESTIMATORS.get_class(name).phantom_gradient]


def _check_relations(values: Mapping[str, Any], owner: str) -> None:
    """The checks that read two fields: the solver's own check of ``solver_kwargs``, the estimator's own check
    of its hyperparameters (a registered class may add its own)."""
    if values["solver_kwargs"]:
        try:
            get_solver(values["solver"], **values["solver_kwargs"])
        except (TypeError, ValueError) as err:
            allowed = f"hyperparameters that solver {values['solver']!r} accepts ({err})"
            raise DEQConfigError(owner, "solver_kwargs", values["solver_kwargs"], allowed) from err
    try:
        grad_estimator_from_hyperparameters(values["grad_estimator"], **_estimator_hyperparameters(values))
    except (TypeError, ValueError) as err:
        allowed = f"an estimator whose hyperparameters accept the grad_* fields ({err})"
        raise DEQConfigError(owner, "grad_estimator", values["grad_estimator"], allowed) from err


def check_deq_values(values: Mapping[str, Any], owner: str) -> None:
    """Raise ``DEQConfigError`` naming the first invalid DEQ field of ``values`` (every field, by name)."""
    for field in DEQ_FIELDS:
        field.check(values[field.name], owner)
    _check_relations(values, owner)


def deq_values(config: Any) -> dict[str, Any]:
    """The DEQ fields of a config (or any object with those attributes) as a dict."""
    return {name: getattr(config, name) for name in DEQ_FIELD_NAMES}


def engine_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DEQFixedPoint`` keyword arguments that DEQ field values feed: the one place where field names
    become engine arguments (the estimator is built here, with the hyperparameters it takes)."""
    kwargs = {
        f.engine_arg: values[f.name]
        for f in DEQ_FIELDS
        if f.group != "gradient" or f.name == "grad_estimator"
    }
    kwargs["solver_kwargs"] = dict(kwargs["solver_kwargs"] or {})
    kwargs["grad_estimator"] = grad_estimator_from_hyperparameters(
        values["grad_estimator"], **_estimator_hyperparameters(values)
    )
    return kwargs


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _allowed_words(field: DEQField) -> str:
    """What a field allows, in words that do not change with registrations (for the docs)."""
    if field.registry is not None:
        words = f"a registered {field.registry.kind} name"
        return f"{words} (not affine-only)" if field.choices is forward_solvers else words
    return field.allowed()


def markdown_table() -> str:
    """The field table as a Markdown table (name, type, default, allowed values, group, engine argument, help):
    the one in docs/design.md, checked by ``tests/models/test_deq_fields_table.py``."""
    rows = [
        "| field | type | default | allowed | group | engine argument | help |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in DEQ_FIELDS:
        cells = [f"`{f.name}`", f"`{f.annotation}`", f"`{f.default!r}`", _allowed_words(f), f.group]
        cells += [f"`{f.engine_arg}`", f.help]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


__all__ = [
    "DEQ_FIELDS",
    "DEQ_FIELD_NAMES",
    "ESTIMATOR_HYPERPARAMETER_FIELDS",
    "DEQConfigError",
    "DEQField",
    "GROUPS",
    "Rule",
    "check_deq_values",
    "deq_field",
    "deq_values",
    "engine_kwargs",
    "estimator_fields",
    "field_names",
    "markdown_table",
    "phantom_gradient_estimators",
]
