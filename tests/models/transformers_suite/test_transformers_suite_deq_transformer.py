"""transformers' own ``ModelTesterMixin`` and ``ConfigTester`` run against the DEQ-Transformer family (fetched at
test time, see ``transformers_suite``)."""

from __future__ import annotations

import unittest
from unittest import mock

from transformers_suite import common_testers, register_model_names

from hf_deq import DEQTransformerConfig, DEQTransformerForCausalLM, DEQTransformerModel, create_config

modeling_common, configuration_common = common_testers()
register_model_names(
    modeling_common,
    "deq_transformer",
    MODEL_MAPPING_NAMES="DEQTransformerModel",
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES="DEQTransformerForCausalLM",
)


class DEQTransformerModelTester:
    """Tiny DEQ-Transformer configs and inputs in the form transformers' common tests expect."""

    def __init__(self, parent, batch_size: int = 3, seq_length: int = 7, is_training: bool = True) -> None:
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        config = self.get_config()
        self.vocab_size = config.vocab_size
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.num_hidden_layers = config.num_hidden_layers

    preset = "test_deq_transformer_tiny"

    def get_config(self) -> DEQTransformerConfig:
        # The common tests compare outputs at 1e-5 (batched vs single rows, save/load, ...); a DEQ's output is
        # defined up to its solver tolerance, so the solve converges well below that.
        return create_config(self.preset, solver_tol=1e-6, solver_max_iter=30, solver_on_failure="ignore")

    def prepare_config_and_inputs(self):
        input_ids = modeling_common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = modeling_common.random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class DEQTransformerCommonModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (DEQTransformerModel, DEQTransformerForCausalLM)
    has_attentions = False  # attention runs in fused SDPA inside the solve: no attention weights are returned
    test_torch_exportable = False  # the solver's loop is data dependent
    test_can_init_all_missing_weights_before_2023 = True  # our files carry no year: run the init check

    def setUp(self) -> None:
        self.model_tester = DEQTransformerModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=DEQTransformerConfig, hidden_size=32, num_attention_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_batching_equivalence(self, atol=1e-4, rtol=1e-4):
        # A DEQ's output is its fixed point up to solver_tol (1e-6 relative: ~1e-4 per element here), and a batch
        # may stop at another step than a single row. transformers also sets every norm's eps to 1 ("less flaky"):
        # LayerNorm then acts as an identity and F has no fixed point, so the model keeps its configured eps.
        no_op = mock.Mock()
        with mock.patch.multiple(
            modeling_common, set_config_for_less_flaky_test=no_op, set_model_for_less_flaky_test=no_op
        ):
            super().test_batching_equivalence(atol=atol, rtol=rtol)
        self.assertTrue(no_op.called)

    @unittest.skip(reason="transformers' generation tests are not in its sdist; tests/models test generate()")
    def test_generation_tester_mixin_inheritance(self):
        pass


class DEQTransformerAdaptiveModelTester(DEQTransformerModelTester):
    preset = "test_deq_transformer_tiny_adaptive"


class DEQTransformerAdaptiveCommonModelTest(DEQTransformerCommonModelTest):
    """The same suite with a tied adaptive input embedding and adaptive softmax."""

    test_resize_embeddings = False  # the vocabulary is laid out in clusters fixed by adaptive_cutoffs

    def setUp(self) -> None:
        super().setUp()
        self.model_tester = DEQTransformerAdaptiveModelTester(self)

    @unittest.skip(reason="the input embedding is an AdaptiveEmbedding (one table per cluster)")
    def test_model_get_set_embeddings(self):
        pass
