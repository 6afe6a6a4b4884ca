"""The shared model tester mixin (docs/design.md, "Tests").

A model test class sets the class attributes below and implements ``get_config`` / ``get_inputs`` /
``get_train_dataset``; every hf_deq model then gets the same checks: save/load round trip, loading with an
overridden estimator, run-time solver/estimator changes, every parameter gets a gradient under every
estimator, solver statistics in the outputs, Auto classes resolve, and ``Trainer`` runs two steps.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import pytest
import torch
from transformers import AutoConfig, AutoModel, Trainer, TrainingArguments

import hf_deq  # noqa: F401  (registers the Auto classes)

BUILTIN_ESTIMATORS = ("implicit", "upg", "npg", "one_step", "unrolled")


class DEQModelTesterMixin:
    #: the model's config class
    config_class: ClassVar[type]
    #: the base model class (what ``AutoModel`` resolves to)
    base_model_class: ClassVar[type]
    #: ``{model class: the Auto class that must resolve to it}``, head models included
    auto_classes: ClassVar[dict[type, Any]]
    #: the output field compared in round trips (e.g. ``"logits"``)
    main_output: ClassVar[str] = "logits"

    # -- to implement -------------------------------------------------------------------------------------
    def get_config(self, **overrides):
        raise NotImplementedError

    def get_inputs(self, config, batch_size: int = 2, with_labels: bool = True) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def get_train_dataset(self, config):
        """Return ``(dataset, data_collator or None)`` with a handful of examples for ``Trainer``."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------------------
    @property
    def model_classes(self) -> list[type]:
        return list(self.auto_classes)

    def _inputs_for(self, model_class, config, **kwargs):
        inputs = self.get_inputs(config, **kwargs)
        if model_class is self.base_model_class:
            inputs.pop("labels", None)
        return inputs

    @staticmethod
    def _seeded(model_class, config):
        torch.manual_seed(0)
        return model_class(config)

    # -- the checks ---------------------------------------------------------------------------------------
    def test_config_round_trip(self, tmp_path):
        config = self.get_config(grad_estimator="npg", grad_steps=3)
        config.save_pretrained(tmp_path)
        loaded = self.config_class.from_pretrained(tmp_path)
        assert loaded.to_dict() == config.to_dict()
        assert loaded.grad_estimator == "npg" and loaded.grad_steps == 3

    def test_invalid_deq_field_raises_clear_error(self):
        with pytest.raises(ValueError, match="grad_damping"):
            self.get_config(grad_damping=1.5)
        with pytest.raises(ValueError, match="available|one of"):
            self.get_config(solver="no_such_solver")

    def test_save_load_round_trip_identical_outputs(self, tmp_path):
        config = self.get_config()
        for model_class in self.model_classes:
            model = self._seeded(model_class, config).eval()
            inputs = self._inputs_for(model_class, config)
            with torch.no_grad():
                before = model(**inputs)
            target = tmp_path / model_class.__name__
            model.save_pretrained(target)
            files = set(os.listdir(target))
            assert "model.safetensors" in files and "config.json" in files
            assert not any(f.endswith(".bin") for f in files)
            loaded = model_class.from_pretrained(target).eval()
            with torch.no_grad():
                after = loaded(**inputs)
            field = self.main_output if model_class is not self.base_model_class else "last_hidden_state"
            torch.testing.assert_close(after[field], before[field], rtol=0, atol=0)
            torch.testing.assert_close(after.solver_nstep, before.solver_nstep)

    def test_from_pretrained_overrides_estimator(self, tmp_path):
        config = self.get_config(grad_estimator="upg")
        model_class = self.model_classes[-1]
        self._seeded(model_class, config).save_pretrained(tmp_path)
        loaded = model_class.from_pretrained(tmp_path, grad_estimator="npg", grad_steps=7)
        assert loaded.config.grad_estimator == "npg" and loaded.config.grad_steps == 7
        estimators = {type(layer.grad_estimator).__name__ for layer in loaded.deq_layers()}
        assert estimators == {"NeumannPhantomGradient"}
        assert all(layer.grad_estimator.steps == 7 for layer in loaded.deq_layers())

    def test_set_estimator_and_solver_at_run_time(self):
        config = self.get_config()
        model = self._seeded(self.model_classes[-1], config)
        model.set_grad_estimator("implicit", grad_max_iter=40)
        assert model.config.grad_estimator == "implicit" and model.config.grad_max_iter == 40
        assert all(
            type(layer.grad_estimator).__name__ == "ImplicitDifferentiation" for layer in model.deq_layers()
        )
        assert all(layer.grad_estimator.max_iter == 40 for layer in model.deq_layers())
        model.set_solver("broyden", solver_max_iter=12, memory=4)
        assert model.config.solver == "broyden" and model.config.solver_kwargs == {"memory": 4}
        assert all(layer.solver.memory == 4 and layer.max_iter == 12 for layer in model.deq_layers())
        with pytest.raises(ValueError, match="grad_estimator"):
            model.set_grad_estimator("no_such_estimator")
        assert model.config.grad_estimator == "implicit"  # unchanged after a refused change
        with pytest.raises(TypeError):
            model.set_solver("anderson", no_such_hyperparameter=1)
        assert model.config.solver == "broyden"

    @pytest.mark.parametrize("estimator", BUILTIN_ESTIMATORS)
    def test_every_parameter_gets_a_gradient(self, estimator):
        config = self.get_config(grad_estimator=estimator, grad_steps=2)
        model_class = self.model_classes[-1]
        model = self._seeded(model_class, config).train()
        outputs = model(**self._inputs_for(model_class, config))
        assert outputs.loss is not None and torch.isfinite(outputs.loss)
        outputs.loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{estimator}: no gradient for {missing}"
        bad = [
            n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f"{estimator}: non-finite gradient for {bad}"
        zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
        assert len(zero) <= len(list(model.parameters())) // 10, f"{estimator}: all-zero gradients for {zero}"

    def test_outputs_carry_solver_statistics(self):
        config = self.get_config()
        for model_class in self.model_classes:
            model = self._seeded(model_class, config).eval()
            inputs = self._inputs_for(model_class, config, batch_size=3)
            with torch.no_grad():
                out = model(**inputs)
            assert out.solver_nstep.shape == (3,) and out.solver_nstep.dtype == torch.long
            assert out.solver_residual.shape == (3,) and torch.isfinite(out.solver_residual).all()
            assert (out.solver_nstep >= 1).all()

    def test_auto_classes_resolve(self, tmp_path):
        config = self.get_config()
        assert type(AutoConfig.for_model(config.model_type)) is self.config_class
        assert type(AutoModel.from_config(config)) is self.base_model_class
        for model_class, auto_class in self.auto_classes.items():
            assert type(auto_class.from_config(config)) is model_class
        model_class = self.model_classes[-1]
        self._seeded(model_class, config).save_pretrained(tmp_path)
        assert type(AutoConfig.from_pretrained(tmp_path)) is self.config_class
        assert type(self.auto_classes[model_class].from_pretrained(tmp_path)) is model_class
        assert type(AutoModel.from_pretrained(tmp_path)) is self.base_model_class

    def test_trainer_runs_two_steps(self, tmp_path):
        config = self.get_config()
        model = self._seeded(self.model_classes[-1], config)
        dataset, collator = self.get_train_dataset(config)
        args = TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-3,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = trainer.train()
        assert result.global_step == 2
        assert math.isfinite(result.training_loss)
        changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
        assert changed, "Trainer did not update any parameter"

    def test_trainer_logs_gradient_alignment(self, tmp_path):
        from hf_deq.trainer_callbacks import GradientAlignmentCallback

        config = self.get_config(grad_estimator="upg", grad_steps=2, grad_damping=0.5)
        model = self._seeded(self.model_classes[-1], config)
        dataset, collator = self.get_train_dataset(config)
        probe = GradientAlignmentCallback(self.get_inputs(config), every_n_steps=1, reference_max_iter=30)
        args = TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-3,
            logging_steps=100,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[probe]
        )
        trainer.train()
        assert [h["step"] for h in probe.history] == [1, 2]
        logged = [h for h in trainer.state.log_history if "grad_alignment_cosine" in h]
        assert [h["step"] for h in logged] == [1, 2]
        assert all(-1.0 <= h["grad_alignment_cosine"] <= 1.0 for h in logged)
