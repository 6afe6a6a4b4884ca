"""Battery (c): every DEQ config field, each class of hostile value, through every way a user sets it:
``create_config`` / ``create_model`` keywords, ``AutoConfig.from_pretrained`` keywords, ``model.config.<field> =
value`` followed by a forward, and ``set_solver`` / ``set_grad_estimator``; and near-misses of the field names
through the same doors. The only right outcomes: a ``ValueError`` naming the field and the value (at once, or at
the next forward, before any computation), or a model that runs with exactly that value and can be saved."""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from typing import Any

import pytest
import torch
from battery_probe import (
    BATTERY,
    HUGE_INTS,
    VALUE_KINDS,
    case,
    hostile_json,
    limit,
    names_value,
    record,
    timed,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from training_flags import HUGE
from transformers import AutoConfig

import hf_deq
from hf_deq import DEQConfig

MDEQ, LM = "test_mdeq_tiny", "test_deq_transformer_tiny"
ROUTES = {  # route -> the preset it is tried on
    "create_config": LM,
    "create_model": MDEQ,
    "AutoConfig.from_pretrained": LM,
    "model.config assignment + forward": MDEQ,
    "set_solver / set_grad_estimator": LM,
}


# -- what each field accepts -----------------------------------------------------------------------------------------
def _int(value: Any, none_ok: bool = False) -> bool | None:
    if value is None:
        return none_ok
    if isinstance(value, float) and value.is_integer() and 1 <= value < HUGE:
        return None  # 8.0: refusing it or running (and saving) with 8 are both right
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return False
    return value < HUGE


def _number(low: float, high: float = math.inf, low_open=False):
    def valid(value: Any) -> bool | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if value < low or (low_open and value == low) or value > high:
            return False
        return None if value >= 1e12 else True

    return valid


def _choice(*choices: str):
    return lambda value: isinstance(value, str) and value in choices


def _check_every(value: Any) -> bool | None:
    """An integer >= 1, or None / 0 for "only at the end"; a huge one is as good as None."""
    if value is None or (value == 0 and type(value) is int):
        return True
    if type(value) is not int or value < 1:
        return False
    return None if value >= HUGE else True


SOLVER_KWARGS = {  # hyperparameter of the presets' solver (Anderson) -> what it accepts
    "memory": _int,
    "regularization": _number(0),
    "mixing": _number(0, 1, low_open=True),
    "check_every": _check_every,
}


def _solver_kwargs(value: Any) -> bool | None:
    if value is None or value == {}:
        return True
    if not isinstance(value, dict):
        return False
    (key, inner), = value.items()  # fmt: skip
    return SOLVER_KWARGS[key](inner) if key in SOLVER_KWARGS else False


FIELDS = {
    "solver": _choice("anderson", "broyden", "fixed_point"),
    "solver_kwargs": _solver_kwargs,
    "solver_max_iter": _int,
    "solver_eval_max_iter": functools.partial(_int, none_ok=True),
    "solver_tol": _number(0),
    "solver_stop_mode": _choice("rel", "abs"),
    "solver_on_failure": _choice("warn", "raise", "ignore"),
    "compile_cell": lambda v: v is False,  # True compiles (minutes): drawn only as False
    "grad_estimator": _choice("implicit", "upg", "npg", "one_step", "unrolled"),
    "grad_steps": _int,
    "grad_damping": _number(0, 1, low_open=True),
    "grad_solver": _choice("anderson", "broyden", "fixed_point", "gmres"),
    "grad_max_iter": _int,
    "grad_tol": _number(0),
    "jacobian_reg_weight": _number(0),
}


def hostile_field_value(field: str, kind: str) -> st.SearchStrategy[Any]:
    values = hostile_json(kind)
    if field == "solver_kwargs":
        values = st.one_of(
            values, st.tuples(st.sampled_from(sorted(SOLVER_KWARGS)), values).map(lambda kv: dict([kv]))
        )
    if field in ("solver_max_iter", "grad_steps", "grad_max_iter") and kind == "wrong_type":
        values = st.one_of(values, st.just(8.0))
    return values


# -- models and inputs -----------------------------------------------------------------------------------------------
@functools.cache
def _model(preset: str):
    torch.manual_seed(0)
    return hf_deq.create_model(preset, solver_on_failure="ignore").eval()


@functools.cache
def _saved(preset: str) -> str:
    folder = tempfile.mkdtemp(prefix="battery_config_")
    hf_deq.create_config(preset).save_pretrained(folder)
    return folder


def _inputs(preset: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if preset == MDEQ:
        return {"pixel_values": torch.randn(2, 1, 8, 8, generator=g)}
    return {"input_ids": torch.randint(0, 99, (2, 6), generator=g)}


def _forward(model, preset) -> str:
    with torch.no_grad():
        logits = model(**_inputs(preset)).logits
    return "" if torch.isfinite(logits).all() else "the forward gave non-finite logits"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _attempt(route: str, field: str, value: Any, preset: str) -> tuple[Any, str]:
    """``(config that runs, problem)`` of setting ``field`` to ``value`` through ``route``."""
    if route == "create_config":
        return hf_deq.create_config(preset, **{field: value}), ""
    if route == "create_model":
        model = hf_deq.create_model(preset, **{"solver_on_failure": "ignore", field: value}).eval()
        return model.config, _forward(model, preset)
    if route == "AutoConfig.from_pretrained":
        return AutoConfig.from_pretrained(_saved(preset), **{field: value}), ""
    model = copy.deepcopy(_model(preset))
    if route == "model.config assignment + forward":
        setattr(model.config, field, value)
    elif field in DEQConfig.SOLVER_FIELDS:
        kwargs = {} if field == "solver" else {field: value}
        model.set_solver(value if field == "solver" else model.config.solver, **kwargs)
    elif field in DEQConfig.GRAD_FIELDS:
        kwargs = {} if field == "grad_estimator" else {field: value}
        model.set_grad_estimator(
            value if field == "grad_estimator" else model.config.grad_estimator, **kwargs
        )
    else:
        model.config.jacobian_reg_weight = value
    return model.config, _forward(model, preset)


def _cases() -> list:
    return [case(route, field, kind, route) for route in ROUTES for field in FIELDS for kind in VALUE_KINDS]


@pytest.mark.parametrize("route, field, kind", _cases())
@BATTERY
@given(data=st.data())
def test_config_field(route, field, kind, data):
    value = data.draw(hostile_field_value(field, kind), label=field)
    assume(not (field == "compile_cell" and value is True))
    valid = FIELDS[field](value)
    result, err, seconds = timed(
        lambda: _attempt(route, field, value, ROUTES[route]), limit(route, field, kind)
    )
    if err is None:
        config, problem = result
        if valid is False:
            problem = problem or "accepted a value that cannot be right"
        elif not _same(getattr(config, field), value):
            problem = problem or f"runs with {getattr(config, field)!r}"
        else:
            try:
                config.check_fields()  # what runs can be saved
            except ValueError as save_err:
                problem = problem or f"runs, but cannot be saved: {save_err}"
        record(route, field, kind, value, "failed" if problem else "handled", problem)
    elif isinstance(err, ValueError) and field in str(err) and names_value(str(err), _shown(field, value)):
        outcome = "failed" if valid is True else "refused"
        record(route, field, kind, value, outcome, f"refused a valid value: {err}" if valid else str(err))
    else:
        record(route, field, kind, value, "failed", f"{type(err).__name__} after {seconds:.1f} s: {err}")


def _shown(field: str, value: Any) -> Any:
    """What the error must show: the hyperparameter's value for a one-key ``solver_kwargs``."""
    if field == "solver_kwargs" and isinstance(value, dict) and len(value) == 1:
        return next(iter(value.values()))
    return value


# -- near-misses of the field names ------------------------------------------------------------------------------------
MISSPELLINGS = {
    "solver_maxiter": "solver_max_iter",
    "solver_max_iters": "solver_max_iter",
    "grad_step": "grad_steps",
    "solver_tolerance": "solver_tol",
    "grad_dampng": "grad_damping",
    "grad_maxiter": "grad_max_iter",
}
SPELLING_ROUTES = [r for r in ROUTES if r != "create_model"]


def _spelling_cases() -> list:
    return [case(route, name, "misspelled name", route) for route in SPELLING_ROUTES for name in MISSPELLINGS]


@pytest.mark.parametrize("route, name, kind", _spelling_cases())
def test_misspelled_field_name(route, name, kind):
    meant = MISSPELLINGS[name]
    value = 3 if meant != "grad_damping" else 0.5
    preset = ROUTES[route]

    def attempt():
        if route == "set_solver / set_grad_estimator":
            model = copy.deepcopy(_model(preset))
            if meant in DEQConfig.SOLVER_FIELDS:
                model.set_solver(model.config.solver, **{name: value})
            else:
                model.set_grad_estimator(model.config.grad_estimator, **{name: value})
            return
        _attempt(route, name, value, preset)

    _, err, _ = timed(attempt)
    if err is None:
        record(route, name, kind, name, "failed", f"{name}={value} was taken silently (meant {meant})")
    elif (
        isinstance(err, (TypeError, ValueError))
        and name in str(err)
        and f"did you mean {meant!r}" in str(err)
    ):
        record(route, name, kind, name, "refused", str(err))
    else:
        record(route, name, kind, name, "failed", f"{type(err).__name__}, no did-you-mean {meant!r}: {err}")


def test_huge_ints_are_drawn():
    """Guards the battery: the ``huge`` class reaches the 10**12 the issue names."""
    assert 10**12 in HUGE_INTS and HUGE == 10**12
