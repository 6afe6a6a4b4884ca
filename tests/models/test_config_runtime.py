"""The config as the run-time truth, misspelled fields, and one error for a bad value from every entry point.

An edit of a DEQ field of ``model.config`` takes effect at the next forward (an invalid one raises
``DEQConfigError`` naming the field before anything is computed) and ``save_pretrained`` refuses an invalid
config. A keyword that is a near-miss of a field raises ``MisspelledConfigFieldError`` naming the field it
probably meant. A bad value gets the same ``DEQConfigError`` (field, value, what is allowed) from the
constructor, the presets, ``from_pretrained`` keywords and config files, ``set_*`` and config edits."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tiny_runs import tiny_inputs, tiny_model
from transformers import AutoConfig, AutoModel

import hf_deq
from hf_deq import DEQConfigError, MisspelledConfigFieldError
from hf_deq.configuration_deq import BUDGET_ALLOWED as BUDGET

KINDS = ["mdeq", "lm"]
PRESET = {"mdeq": "test_mdeq_tiny", "lm": "test_deq_transformer_tiny"}


def _first_module_spy(model) -> list[int]:
    """Count the calls of the first module a forward runs (the stem / the token embedding)."""
    calls: list[int] = []
    first = model.base_model.stem if hasattr(model.base_model, "stem") else model.base_model.embed_tokens
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


# -- edits of model.config take effect --------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_edited_budget_and_tolerance_take_effect_at_the_next_forward(kind):
    model = tiny_model(kind, solver_max_iter=6, solver_eval_max_iter=8).eval()
    inputs = tiny_inputs(kind, model.config)
    with torch.no_grad():
        model.config.solver_tol = 0.0  # every sample runs its whole budget
        assert int(model(**inputs).solver_nstep.max()) > 2
        model.config.solver_eval_max_iter = 2
        outputs = model(**inputs)
    assert int(outputs.solver_nstep.max()) <= 2, outputs.solver_nstep
    assert all(layer.eval_max_iter == 2 and layer.tol == 0.0 for layer in model.deq_layers())


@pytest.mark.parametrize("kind", KINDS)
def test_edited_estimator_and_solver_take_effect_at_the_next_forward(kind):
    model = tiny_model(kind).train()
    inputs = tiny_inputs(kind, model.config)
    model.config.grad_estimator = "npg"
    model.config.grad_steps = 3
    model.config.solver = "broyden"
    model.config.solver_kwargs = {"memory": 4}
    model(**inputs).loss.backward()
    (layer,) = model.deq_layers()
    assert type(layer.grad_estimator).__name__ == "NeumannPhantomGradient" and layer.grad_estimator.steps == 3
    assert type(layer.solver).__name__ == "Broyden" and layer.solver.memory == 4
    model.config.solver_kwargs["memory"] = 2  # an edit inside the dict counts too
    model(**inputs)
    assert model.deq_layers()[0].solver.memory == 2


@pytest.mark.parametrize("kind", KINDS)
def test_unchanged_config_does_not_rebuild_the_layers(kind):
    model = tiny_model(kind).eval()
    inputs = tiny_inputs(kind, model.config)
    (layer,) = model.deq_layers()
    solver, estimator = layer.solver, layer.grad_estimator
    with torch.no_grad():
        for _ in range(3):
            model(**inputs)
    assert layer.solver is solver and layer.grad_estimator is estimator
    model.set_solver("broyden", solver_max_iter=5)  # the validated shortcut rebuilds once, at the call
    solver = layer.solver
    assert type(solver).__name__ == "Broyden" and layer.max_iter == 5
    with torch.no_grad():
        model(**inputs)
    assert layer.solver is solver


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_edit_raises_at_the_next_forward_before_any_computation(kind):
    model = tiny_model(kind)
    inputs = tiny_inputs(kind, model.config)
    calls = _first_module_spy(model)
    model.config.grad_estimator = "foo"
    with pytest.raises(DEQConfigError) as info:
        model(**inputs)
    assert info.value.field == "grad_estimator" and "grad_estimator='foo'" in str(info.value)
    assert "upg" in str(info.value)  # what is allowed
    assert not calls  # nothing ran
    model.config.grad_estimator = "one_step"
    model(**inputs).loss.backward()
    assert calls and type(model.deq_layers()[0].grad_estimator).__name__ == "OneStepGradient"


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_refuses_an_invalid_config(tmp_path, kind):
    model = tiny_model(kind)
    model.config.grad_estimator = "foo"
    with pytest.raises(DEQConfigError, match="grad_estimator='foo'"):
        model.save_pretrained(tmp_path / "model")
    with pytest.raises(DEQConfigError, match="grad_estimator='foo'"):
        model.config.save_pretrained(tmp_path / "config")
    assert not (tmp_path / "model").exists() and not (tmp_path / "config").exists()
    model.config.grad_estimator = "upg"
    model.config.solver_tol = -1.0
    with pytest.raises(DEQConfigError, match="solver_tol"):
        model.save_pretrained(tmp_path / "model")
    model.config.solver_tol = 1e-3
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()


def test_save_pretrained_checks_architecture_fields_too(tmp_path):
    model = tiny_model("mdeq")
    model.config.num_groups = 3  # does not divide the channels
    with pytest.raises(DEQConfigError, match="num_groups"):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model").exists()


# -- misspelled fields --------------------------------------------------------------------------------------
def _saved(tmp_path, kind: str):
    model = tiny_model(kind)
    model.save_pretrained(tmp_path / kind)
    return type(model), tmp_path / kind


def _misspelled_entry_points(tmp_path):
    cls, path = _saved(tmp_path, "mdeq")
    _, lm_path = _saved(tmp_path, "lm")
    base = hf_deq.variants.get_variant("test_mdeq_tiny").config_kwargs
    return {
        "create_model": lambda: hf_deq.create_model("mdeq-tiny-digits", solver_maxiter=5),
        "create_config": lambda: hf_deq.create_config("mdeq-tiny-digits", solver_maxiter=5),
        "constructor": lambda: hf_deq.MDEQConfig(**base, solver_maxiter=5),
        "from_pretrained": lambda: cls.from_pretrained(path, solver_maxiter=5),
        "AutoModel.from_pretrained": lambda: AutoModel.from_pretrained(path, solver_maxiter=5),
        "AutoConfig.from_pretrained": lambda: AutoConfig.from_pretrained(path, solver_maxiter=5),
        "lm from_pretrained": lambda: AutoModel.from_pretrained(lm_path, solver_maxiter=5),
    }


def test_a_misspelled_field_names_the_field_it_probably_meant(tmp_path):
    for entry, call in _misspelled_entry_points(tmp_path).items():
        with pytest.raises(MisspelledConfigFieldError) as info:
            call()
        error = info.value
        assert isinstance(error, DEQConfigError) and isinstance(error, ValueError), entry
        assert error.field == "solver_maxiter" and error.suggestion == "solver_max_iter", entry
        assert "'solver_maxiter'" in str(error) and "did you mean 'solver_max_iter'" in str(error), entry


@pytest.mark.parametrize(
    "kind, key, meant",
    [
        ("mdeq", "grad_step", "grad_steps"),
        ("mdeq", "grad_estimater", "grad_estimator"),
        ("mdeq", "num_channel", "num_channels"),
        ("lm", "layer_norm_epsilon", "layer_norm_eps"),
        ("lm", "solver_eval_maxiter", "solver_eval_max_iter"),
        ("lm", "solver_tolerance", "solver_tol"),  # word by word: a shortening (whole-name ratio 0.77)
        ("mdeq", "grad_tolerance", "grad_tol"),
        ("mdeq", "solver_maximum_iters", "solver_max_iter"),
    ],
)
def test_near_misses_of_any_field(kind, key, meant):
    with pytest.raises(MisspelledConfigFieldError, match=f"did you mean '{meant}'"):
        hf_deq.create_config(PRESET[kind], **{key: 1})


@pytest.mark.parametrize("kind", KINDS)
def test_the_keys_transformers_takes_are_no_near_misses(kind):
    """The keywords of ``from_pretrained`` and of ``PreTrainedConfig`` pass through as in transformers."""
    import inspect

    from transformers import PreTrainedConfig, PreTrainedModel

    from hf_deq.configuration_deq import near_miss

    config_class = type(hf_deq.create_config(PRESET[kind]))
    fields = [f.name for f in dataclasses.fields(config_class)]
    keys = set()
    for function in (
        PreTrainedModel.from_pretrained,
        PreTrainedConfig.from_pretrained,
        PreTrainedConfig.__init__,
    ):
        keys |= set(inspect.signature(function).parameters)
    keys |= {
        "trust_remote_code",
        "revision",
        "cache_dir",
        "subfolder",
        "token",
        "device_map",
        "dtype",
        "variant",
    }
    keys |= {"use_safetensors", "local_files_only", "force_download", "low_cpu_mem_usage", "weights_only"}
    assert {k: near_miss(k, fields) for k in keys - set(fields) if near_miss(k, fields)} == {}


@pytest.mark.parametrize("kind", KINDS)
def test_a_misspelled_or_mistyped_assignment_is_refused_where_it_is_written(kind):
    model = tiny_model(kind)
    with pytest.raises(MisspelledConfigFieldError, match="did you mean 'solver_max_iter'"):
        model.config.solver_maxiter = 3
    assert not hasattr(model.config, "solver_maxiter")
    with pytest.raises(DEQConfigError, match=r"solver_max_iter=8.0 is invalid: expected an integer"):
        model.config.solver_max_iter = 8.0
    with pytest.raises(DEQConfigError, match=r"grad_steps=True is invalid"):
        model.config.grad_steps = True
    # values equal to valid ones (0 == False, False == 0.0, True == 1.0): the forward would not see the edit
    with pytest.raises(DEQConfigError, match=r"compile_cell=0 is invalid: expected True or False"):
        model.config.compile_cell = 0
    with pytest.raises(DEQConfigError, match=r"jacobian_reg_weight=False is invalid: expected a number"):
        model.config.jacobian_reg_weight = False
    with pytest.raises(DEQConfigError, match=r"grad_damping=True is invalid: expected a number"):
        model.config.grad_damping = True
    with pytest.raises(DEQConfigError, match=r"solver_kwargs=\[\] is invalid: expected a dict"):
        model.config.solver_kwargs = []
    assert model.config.solver_max_iter == tiny_model(kind).config.solver_max_iter  # nothing written
    model.config.solver_eval_max_iter = None  # None is a value of this field
    model.config.solver_max_iter = 7
    model.config.my_note = "kept"  # an unrelated new attribute, as in transformers
    assert (model.config.solver_max_iter, model.config.my_note) == (7, "kept")


@pytest.mark.parametrize(
    "call, meant",
    [
        (lambda m: m.set_solver("anderson", solver_maxiter=5), "solver_max_iter"),
        (lambda m: m.set_solver("broyden", solver_tol_=1e-4), "solver_tol"),
        (lambda m: m.set_solver("anderson", solver_tolerance=1e-4), "solver_tol"),
        (lambda m: m.set_grad_estimator("implicit", grad_tolerance=1e-6), "grad_tol"),
        (lambda m: m.set_grad_estimator("npg", grad_step=3), "grad_steps"),
        (lambda m: m.set_grad_estimator("npg", dampng=0.5), "damping"),
    ],
)
def test_set_solver_and_set_grad_estimator_name_the_field_a_near_miss_meant(call, meant):
    model = tiny_model("mdeq")
    before = model.config.to_dict()
    with pytest.raises(MisspelledConfigFieldError, match=f"did you mean '{meant}'"):
        call(model)
    assert model.config.to_dict() == before


def test_a_misspelled_key_in_a_config_file_names_the_field(tmp_path):
    cls, path = _saved(tmp_path, "mdeq")
    config = json.loads((path / "config.json").read_text())
    config["grad_dampng"] = config.pop("grad_damping")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MisspelledConfigFieldError, match="did you mean 'grad_damping'"):
        cls.from_pretrained(path)


def test_other_unknown_keys_keep_the_transformers_behaviour(tmp_path):
    config = hf_deq.create_config("test_mdeq_tiny", my_note="digits run 3")
    assert config.my_note == "digits run 3"  # stored as an attribute
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).my_note == "digits run 3"
    loaded, unused = AutoConfig.from_pretrained(tmp_path, my_other_key=1, return_unused_kwargs=True)
    assert unused == {"my_other_key": 1}
    _, unused = AutoConfig.from_pretrained(tmp_path, solver_max_iter=7, return_unused_kwargs=True)
    assert unused == {}


# -- one error path -----------------------------------------------------------------------------------------
def _bad_value_entry_points(tmp_path, kind: str):
    cls, path = _saved(tmp_path, kind)
    config_class = type(hf_deq.create_config(PRESET[kind]))
    base = hf_deq.variants.get_variant(PRESET[kind]).config_kwargs
    bad = {"solver_max_iter": -5}

    def config_file():
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **bad}))
        try:
            return cls.from_pretrained(path)
        finally:
            (path / "config.json").write_text(json.dumps(config))

    def edit_then_forward():
        model = tiny_model(kind)
        model.config.solver_max_iter = -5
        model(**tiny_inputs(kind, model.config))

    return {
        "constructor": lambda: config_class(**{**base, **bad}),
        "create_config": lambda: hf_deq.create_config(PRESET[kind], **bad),
        "create_model": lambda: hf_deq.create_model(PRESET[kind], **bad),
        "from_pretrained": lambda: cls.from_pretrained(path, **bad),
        "AutoModel.from_pretrained": lambda: AutoModel.from_pretrained(path, **bad),
        "AutoConfig.from_pretrained": lambda: AutoConfig.from_pretrained(path, **bad),
        "config file": config_file,
        "set_solver": lambda: tiny_model(kind).set_solver("anderson", **bad),
        "config edit": edit_then_forward,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_value_gets_the_same_error_from_every_entry_point(tmp_path, kind):
    name = type(hf_deq.create_config(PRESET[kind])).__name__
    for entry, call in _bad_value_entry_points(tmp_path, kind).items():
        with pytest.raises(DEQConfigError) as info:
            call()
        assert (info.value.field, info.value.value) == ("solver_max_iter", -5), entry
        assert str(info.value) == f"{name}.solver_max_iter=-5 is invalid: expected {BUDGET}", entry


def test_a_bad_solver_hyperparameter_in_set_solver_names_solver_kwargs():
    model = tiny_model("mdeq")
    with pytest.raises(DEQConfigError) as info:
        model.set_solver("anderson", memory=0)
    assert info.value.field == "solver_kwargs" and "memory" in str(info.value)
    with pytest.raises(TypeError, match="no_such_hyperparameter"):  # an unknown keyword stays a TypeError
        model.set_solver("anderson", no_such_hyperparameter=1)
