"""transformers' own ``ModelTesterMixin`` and ``ConfigTester`` run against the MDEQ family (fetched at test time,
see ``transformers_suite``)."""

from __future__ import annotations

import copy
import unittest

import torch
from transformers_suite import common_testers, register_model_names

from hf_deq import MDEQConfig, MDEQForImageClassification, MDEQModel, create_config
from hf_deq.models.mdeq.modeling_mdeq import branch_resolutions

modeling_common, configuration_common = common_testers()
register_model_names(
    modeling_common,
    "mdeq",
    MODEL_MAPPING_NAMES="MDEQModel",
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES="MDEQForImageClassification",
)


class MDEQModelTester:
    """Tiny MDEQ configs and inputs in the form transformers' common tests expect."""

    def __init__(self, parent, batch_size: int = 3, is_training: bool = True) -> None:
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.config = self.get_config()
        self.image_size = self.config.image_size
        self.num_channels = self.config.num_channels
        self.num_labels = self.config.num_labels

    def get_config(self) -> MDEQConfig:
        # The common tests compare outputs at 1e-5 (batched vs single rows, save/load, ...); a DEQ's output is
        # defined up to its solver tolerance, so the solve runs below that (here: its whole budget).
        return create_config("test_mdeq_tiny", solver_tol=1e-6, solver_on_failure="ignore")

    def prepare_config_and_inputs(self):
        pixel_values = modeling_common.floats_tensor(
            [self.batch_size, self.num_channels, self.image_size, self.image_size]
        )
        labels = modeling_common.ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class MDEQCommonModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MDEQModel, MDEQForImageClassification)
    has_attentions = False  # convolutions only
    test_resize_embeddings = False  # no token embeddings
    test_torch_exportable = False  # the solver's loop is data dependent
    test_can_init_all_missing_weights_before_2023 = True  # our files carry no year: run the init check

    def setUp(self) -> None:
        self.model_tester = MDEQModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self,
            config_class=MDEQConfig,
            has_text_modality=False,
            common_properties=["num_channels", "image_size"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self):
        """Overrides the per-layer ``(seq_len, hidden_size)`` check: MDEQ's hidden states are the equilibrium maps of
        its resolution branches, ``(batch, channels[i], height_i, width_i)``, highest resolution first; asked for by
        the argument or by ``config.output_hidden_states``."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        expected = [
            (self.model_tester.batch_size, c, *hw)
            for c, hw in zip(
                config.channels, branch_resolutions(config, config.image_size, config.image_size)
            )
        ]
        for model_class in self.all_model_classes:
            for by_config in (False, True):
                run_config = copy.deepcopy(config)
                run_config.output_hidden_states = by_config
                model = model_class(run_config).eval()
                with torch.no_grad():
                    out = model(**inputs_dict, **({} if by_config else {"output_hidden_states": True}))
                self.assertEqual([tuple(h.shape) for h in out.hidden_states], expected)
        with torch.no_grad():
            plain = MDEQForImageClassification(config).eval()(**inputs_dict)
        self.assertIsNone(plain.hidden_states)

    @unittest.skip(reason="a convolutional image model has no token embeddings (as transformers' ResNet)")
    def test_model_get_set_embeddings(self):
        pass
