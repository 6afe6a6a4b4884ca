"""Register an estimator, see it everywhere: one class and one registry entry make a new gradient estimator a valid
config value, a ``set_grad_estimator`` target, a model-card row with its own description, a phantom gradient on
the card's tags, and a choice of the training scripts' ``--grad_estimator`` flag, with no other edit."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import tiny_inputs, tiny_model

import hf_deq
from hf_deq import DEQConfigError, hub
from hf_deq.deq import NeumannPhantomGradient, available_grad_estimators, register_grad_estimator
from hf_deq.deq.grad import GRAD_ESTIMATORS
from hf_deq.deq_fields import estimator_fields, phantom_gradient_estimators
from hf_deq.tasks import training_script

NAME = "plain_neumann_test"
DESCRIPTION = "a test copy of NPG (arXiv 2111.05177, eq. 10), registered by the test"
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_mdeq_classifier.py"


class PlainNeumannEstimator(NeumannPhantomGradient):
    """A registered subclass with its own label and description."""

    label = "plain Neumann"
    description = DESCRIPTION


@pytest.fixture
def registered():
    """The test estimator, registered for one test and unregistered after it."""
    register_grad_estimator(NAME, PlainNeumannEstimator)
    yield NAME
    GRAD_ESTIMATORS.unregister(NAME)


def test_the_registry_carries_its_text(registered):
    assert GRAD_ESTIMATORS.label(registered) == "plain Neumann"
    assert GRAD_ESTIMATORS.description(registered) == DESCRIPTION
    # what it reads: its constructor arguments mapped to the gradient fields, nothing listed by hand
    assert estimator_fields(registered) == ("grad_steps", "grad_damping")
    assert registered in phantom_gradient_estimators()  # inherited from NPG


def test_config_and_set_grad_estimator_accept_it_and_training_runs(registered):
    config = hf_deq.create_config("test_mdeq_tiny", grad_estimator=registered, grad_steps=3)
    assert config.grad_estimator == registered
    model = tiny_model("mdeq").train()
    model.set_grad_estimator(registered, steps=2, damping=0.8)
    assert model.config.grad_estimator == registered and model.config.grad_steps == 2
    assert all(isinstance(layer.grad_estimator, PlainNeumannEstimator) for layer in model.deq_layers())
    loss = model(**tiny_inputs("mdeq", model.config)).loss
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_card_shows_its_description_and_fields(registered):
    config = hf_deq.create_config("test_mdeq_tiny", grad_estimator=registered, grad_steps=7)
    card = hub.render_model_card(config=config, solver_stats={"source": "given"})
    assert f"| gradient estimator | `{registered}` (plain Neumann): {DESCRIPTION} |" in card
    assert "| k (steps) | 7 |" in card and "| lambda (damping) | 0.5 |" in card
    assert "backward solver" not in card  # a field it does not read
    assert "phantom-gradient" in card  # the tag, from the class's phantom_gradient


def test_the_training_flag_accepts_it(registered, tmp_path):
    _, parse_args, _ = training_script("image-classification", TRAIN_SCRIPT)
    args = parse_args(["--output_dir", str(tmp_path / "out"), "--grad_estimator", registered])
    assert args.grad_estimator == registered


def test_an_unknown_name_is_refused_naming_field_value_and_choices(registered, tmp_path, capsys):
    with pytest.raises(DEQConfigError) as caught:
        hf_deq.create_config("test_mdeq_tiny", grad_estimator="no_such_estimator")
    message = str(caught.value)
    assert "grad_estimator" in message and "'no_such_estimator'" in message
    assert str(available_grad_estimators()) in message and registered in message
    _, parse_args, _ = training_script("image-classification", TRAIN_SCRIPT)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--output_dir", str(tmp_path / "out"), "--grad_estimator", "no_such_estimator"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--grad_estimator" in error and "'no_such_estimator'" in error and registered in error


def test_unregister_removes_it_everywhere(registered):
    GRAD_ESTIMATORS.unregister(registered)
    try:
        assert registered not in available_grad_estimators()
        with pytest.raises(DEQConfigError, match="grad_estimator"):
            hf_deq.create_config("test_mdeq_tiny", grad_estimator=registered)
        with pytest.raises(ValueError, match="unknown gradient estimator"):
            GRAD_ESTIMATORS.unregister(registered)
    finally:
        register_grad_estimator(NAME, PlainNeumannEstimator)  # the fixture's finalizer unregisters it
