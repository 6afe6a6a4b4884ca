"""DEQ-Transformer: the shared model checks, plus generation with the equilibrium cache, pipeline, presets,
input errors, and the training script end to end (its resume is the shared loop's, tested in tests/training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from deq_transformer_helpers import TEXT, DEQTransformerTesterBase, random_ids, train_tiny_char_model
from script_loading import load_script
from torch.nn.utils import parametrize
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    pipeline,
)

import hf_deq
from hf_deq import DEQTransformerConfig, DEQTransformerForCausalLM
from hf_deq.data.tokenizers import train_bpe_tokenizer, train_char_tokenizer
from hf_deq.modeling_outputs import CACHE_FIELD

TINY = "test_deq_transformer_tiny"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def tinyshakespeare(request) -> Path:
    """``TINYSHAKESPEARE`` of tests/conftest.py, taken from the conftest module pytest loaded (several conftest
    modules share the name ``conftest``, so it is looked up by file)."""
    for plugin in request.config.pluginmanager.get_plugins():
        module_file = getattr(plugin, "__file__", None)
        if module_file and Path(module_file).resolve() == REPO / "tests" / "conftest.py":
            return Path(plugin.TINYSHAKESPEARE)
    pytest.fail("tests/conftest.py is not loaded")


@pytest.fixture(scope="module")
def trained():
    return train_tiny_char_model(TINY, steps=40)


def tiny_config(**overrides) -> DEQTransformerConfig:
    return hf_deq.create_config(TINY, **overrides)


def tight_model(seed: int = 0, **overrides) -> DEQTransformerForCausalLM:
    """A model with non-trivial dynamics (larger weights) solved to a tight tolerance."""
    fields = {"initializer_range": 0.15, "solver_tol": 1e-7, "solver_max_iter": 100, **overrides}
    torch.manual_seed(seed)
    return DEQTransformerForCausalLM(tiny_config(**fields)).eval()


class DEQTransformerModelTest(DEQTransformerTesterBase):
    preset = TINY
    main_output = "logits"

    # -- model-specific checks -----------------------------------------------------------------------------
    def test_output_shapes(self):
        config = self.get_config()
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config).eval()
        ids = random_ids(config, 3, 9)
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            base = model.model(input_ids=ids)
            last = model(input_ids=ids, logits_to_keep=1, use_cache=False)
            as_tuple = model(input_ids=ids, return_dict=False, use_cache=False)
        assert out.logits.shape == (3, 9, config.vocab_size)
        assert base.last_hidden_state.shape == (3, 9, config.hidden_size)
        assert [h.shape for h in out.hidden_states] == [(3, 9, config.hidden_size)] * 2
        assert out.solver_nstep.shape == (3,) and out.solver_residual.shape == (3,)
        assert isinstance(out.past_key_values, DynamicCache) and out.past_key_values.get_seq_length() == 9
        assert last.logits.shape == (3, 1, config.vocab_size) and last.past_key_values is None
        torch.testing.assert_close(last.logits[:, 0], out.logits[:, -1])
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied

    def test_loss_is_shifted_cross_entropy_ignoring_minus_100(self):
        config = self.get_config()
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config).eval()
        ids = random_ids(config, 2, 7)
        labels = ids.clone()
        labels[0, 3] = -100
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)
        expected = F.cross_entropy(
            out.logits[:, :-1].reshape(-1, config.vocab_size), labels[:, 1:].reshape(-1)
        )
        torch.testing.assert_close(out.loss, expected)

    def test_shift_labels_replace_labels(self):
        config = self.get_config()
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config).eval()
        ids = random_ids(config, 2, 7)
        shifted = random_ids(config, 2, 7, seed=5)
        shifted[1, 2] = -100
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids, shift_labels=shifted)  # labels are ignored then
            alone = model(input_ids=ids, shift_labels=shifted)
        expected = F.cross_entropy(out.logits.reshape(-1, config.vocab_size), shifted.reshape(-1))
        torch.testing.assert_close(out.loss, expected)
        torch.testing.assert_close(alone.loss, expected)
        with pytest.raises(ValueError, match="shift_labels must have shape"):
            model(input_ids=ids, shift_labels=shifted[:, :-1])

    def test_config_output_hidden_states_is_read_at_forward(self):
        config = self.get_config()
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config).eval()
        ids = random_ids(config, 2, 5)
        with torch.no_grad():
            assert model(input_ids=ids).hidden_states is None
            model.config.output_hidden_states = True
            assert len(model(input_ids=ids).hidden_states) == 2
            assert model(input_ids=ids, output_hidden_states=False).hidden_states is None

    @pytest.mark.skipif(
        CACHE_FIELD != "cache", reason="this transformers still names the cache past_key_values"
    )
    def test_the_old_cache_name_warns_like_transformers_models(self):
        config = self.get_config()
        model = DEQTransformerForCausalLM(config).eval()
        ids = random_ids(config, 1, 4)
        with torch.no_grad():
            cache = model(input_ids=ids[:, :3]).cache
            with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
                model(input_ids=ids[:, 3:], past_key_values=cache)

    def test_a_float64_model_keeps_a_float64_loss(self):
        config = self.get_config()
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config).double().eval()
        ids = random_ids(config, 2, 7)
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        assert out.logits.dtype == out.loss.dtype == torch.float64
        expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1))
        torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)

    def test_jacobian_regularisation_is_added_to_the_loss(self):
        config = self.get_config(jacobian_reg_weight=0.5)
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config).train()
        ids = random_ids(config, 2, 6)
        out = model(input_ids=ids, labels=ids)
        assert out.jacobian_loss is not None and out.jacobian_loss > 0
        lm_loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1))
        torch.testing.assert_close(out.loss, lm_loss + 0.5 * out.jacobian_loss)
        out.loss.backward()
        assert model.model.block.mlp.fc_in.weight.grad is not None
        with torch.no_grad():
            assert model.eval()(input_ids=ids, labels=ids).jacobian_loss is None

    def test_post_layernorm_weight_norm_dropout_variant(self, tmp_path):
        config = hf_deq.create_config("test_deq_transformer_tiny_post")
        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(config)
        assert parametrize.is_parametrized(model.model.block.attn.qkv_proj, "weight")
        assert model.model.block.ln_out is None
        ids = random_ids(config, 2, 8)
        out = model.train()(input_ids=ids, labels=ids)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert model.model.block.mlp.fc_out.parametrizations.weight.original1.grad is not None
        model.eval()
        with torch.no_grad():
            first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
        torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout in eval
        model.save_pretrained(tmp_path)
        with torch.no_grad():
            loaded = DEQTransformerForCausalLM.from_pretrained(tmp_path).eval()(input_ids=ids).logits
        torch.testing.assert_close(loaded, first, rtol=0, atol=0)

    def test_equilibrium_of_a_prefix_is_the_prefix_of_the_equilibrium(self):
        """Causality: the basis of the equilibrium cache."""
        model = tight_model()
        ids = random_ids(model.config, 2, 10)
        with torch.no_grad():
            full = model.model(input_ids=ids, use_cache=False).last_hidden_state
            prefix = model.model(input_ids=ids[:, :6], use_cache=False).last_hidden_state
        assert (model.model(input_ids=ids, use_cache=False).solver_nstep > 3).all()  # not a trivial map
        torch.testing.assert_close(prefix, full[:, :6], rtol=0, atol=1e-5)

    def test_incremental_forward_with_cache_matches_full_forward(self):
        model = tight_model()
        ids = random_ids(model.config, 2, 10)
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits
            cache = DynamicCache(config=model.config)
            first = model(input_ids=ids[:, :5], cache=cache)
            chunk = model(input_ids=ids[:, 5:8], past_key_values=first.past_key_values)  # several new tokens
            last = model(input_ids=ids[:, 8:], cache=chunk.past_key_values)
        assert cache.get_seq_length() == 10
        torch.testing.assert_close(
            torch.cat([first.logits, chunk.logits, last.logits], 1), full, rtol=0, atol=1e-4
        )
        with pytest.raises(ValueError, match="not both"):
            model(input_ids=ids[:, :2], cache=DynamicCache(), past_key_values=DynamicCache())

    def test_cached_and_uncached_greedy_generation_agree(self, trained):
        model, tokenizer = trained
        calls: list[int] = []
        hook = model.register_forward_pre_hook(
            lambda m, a, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True
        )
        tokenizer.padding_side = "left"
        prompts = tokenizer(["First Citizen:\nBe", "All:\nSpeak"], return_tensors="pt", padding=True)
        kwargs = {"max_new_tokens": 14, "do_sample": False, **prompts}
        try:
            cached = model.generate(use_cache=True, **kwargs)
            assert calls == [17] + [1] * 13  # the prompt, then one new token at a time against the cache
            uncached = model.generate(use_cache=False, **kwargs)
        finally:
            hook.remove()
        assert cached.shape == (2, 17 + 14)
        assert torch.equal(cached, uncached), tokenizer.batch_decode(torch.cat([cached, uncached]))
        # a trained model: not a degenerate constant continuation
        assert len(set(cached[0, 17:].tolist())) > 3
        # beam search reorders the cache
        beams = {"max_new_tokens": 6, "num_beams": 2, "do_sample": False, **prompts}
        assert torch.equal(model.generate(use_cache=True, **beams), model.generate(use_cache=False, **beams))

    def test_cached_step_warm_starts_from_the_previous_equilibrium(self, trained):
        model, tokenizer = trained
        ids = tokenizer(["First Citizen:\nBe"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            prefix = model.model(input_ids=ids[:, :-1], use_cache=True)
            cache = prefix.past_key_values
            stored_length, state = cache.deq_last_state
            assert stored_length == ids.shape[1] - 1
            torch.testing.assert_close(state, prefix.last_hidden_state[:, -1], rtol=0, atol=0)
            warm = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)
            cold_cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
            cold_cache.deq_last_state = (None, None)  # nothing stored: the solve starts from zeros
            cold = model(input_ids=ids[:, -1:], past_key_values=cold_cache, use_cache=True)
            full = model(input_ids=ids, use_cache=False)
        # the warm start changes the solver's path, not its fixed point
        torch.testing.assert_close(warm.logits[:, -1], full.logits[:, -1], atol=1e-3, rtol=0)
        torch.testing.assert_close(cold.logits[:, -1], full.logits[:, -1], atol=1e-3, rtol=0)

    def test_pipeline_text_generation_on_a_saved_model(self, trained, tmp_path):
        model, tokenizer = trained
        model.save_pretrained(tmp_path)
        tokenizer.save_pretrained(tmp_path)
        generator = pipeline("text-generation", model=str(tmp_path))
        assert isinstance(generator.model, DEQTransformerForCausalLM)
        text = generator("All:\nSpeak", max_new_tokens=8, do_sample=False)[0]["generated_text"]
        ids = tokenizer("All:\nSpeak", return_tensors="pt")["input_ids"]
        expected = tokenizer.decode(
            model.generate(ids, max_new_tokens=8, do_sample=False)[0], skip_special_tokens=True
        )
        assert text == expected and text.startswith("All:\nSpeak") and len(text) > len("All:\nSpeak")

    def test_token_ids_out_of_range_raise_a_clear_error(self):
        config = self.get_config()
        model = DEQTransformerForCausalLM(config).eval()
        for bad in (config.vocab_size, -1):
            ids = torch.tensor([[1, 2, bad]])
            with pytest.raises(ValueError, match=rf"token id {bad}.*vocabulary"):
                model(input_ids=ids)

    def test_sequence_longer_than_max_position_embeddings_raises(self):
        config = self.get_config(max_position_embeddings=8)
        model = DEQTransformerForCausalLM(config).eval()
        with pytest.raises(ValueError, match="max_position_embeddings=8"):
            model(input_ids=random_ids(config, 1, 9))
        with torch.no_grad():
            cache = model(input_ids=random_ids(config, 1, 8)).past_key_values
        with pytest.raises(ValueError, match="cached 8 \\+ new 1.*max_position_embeddings=8"):
            model(input_ids=random_ids(config, 1, 1), cache=cache)

    def test_invalid_architecture_fields_raise(self):
        with pytest.raises(ValueError, match="hidden_size=30.*num_attention_heads=4"):
            self.get_config(hidden_size=30)
        with pytest.raises(ValueError, match="norm_position"):
            self.get_config(norm_position="middle")
        with pytest.raises(ValueError, match="hidden_dropout"):
            self.get_config(hidden_dropout=1.0)
        with pytest.raises(ValueError, match="hidden_size"):  # head size 3 is odd: no rotary pairs
            self.get_config(hidden_size=12)


# -- presets -------------------------------------------------------------------------------------------------
def _parameters_on_meta(name: str, **overrides) -> int:
    with torch.device("meta"):
        model = hf_deq.create_model(name, **overrides)
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def test_presets_and_their_parameter_counts():
    names = hf_deq.list_variants("deq-transformer")
    assert names == ["deq-transformer-char", "deq-transformer-small", "deq-transformer-wt103"]
    assert {
        "test_deq_transformer_tiny",
        "test_deq_transformer_tiny_post",
        "test_deq_transformer_tiny_adaptive",
    } <= set(hf_deq.list_variants(include_test=True))
    # wt103: the paper's block with the paper's tied adaptive embedding / softmax over 267,735 words
    config = hf_deq.create_config("deq-transformer-wt103")
    h, inner, vocab = 700, 48000, 267735
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.vocab_size) == (
        h,
        10,
        inner,
        vocab,
    )
    assert (config.adaptive_cutoffs, config.adaptive_div_val, config.tie_word_embeddings) == (
        [20000, 40000, 200000],
        4,
        True,
    )
    block = 3 * h * h + h * h + (h * inner + inner) + (inner * h + h) + 2 * h  # + g of weight norm below
    weight_norm_gains = 3 * h + h + inner + h
    norms = 2 * 2 * h + 2 * h  # ln_1, ln_2 and the injection norm
    sizes, dims = [20000, 20000, 160000, vocab - 200000], [700, 175, 43, 10]
    embedding = sum(n * d for n, d in zip(sizes, dims)) + sum(h * d for d in dims)  # tied: counted once
    softmax = vocab + 3 * h + 3  # biases of the cluster layers, head entries of the 3 tail clusters
    expected = embedding + softmax + block + weight_norm_gains + norms - 2 * h
    assert _parameters_on_meta("deq-transformer-wt103") == expected == 95_241_188
    # with a plain tied embedding instead
    assert _parameters_on_meta("deq-transformer-wt103", adaptive_cutoffs=None) == 256_678_900
    # the char demo has at most a third of the 0.8M-parameter explicit baseline with a 65-character vocabulary
    assert _parameters_on_meta("deq-transformer-char", vocab_size=68) <= 800_000 // 3


# -- tokenizers ----------------------------------------------------------------------------------------------
def test_trained_tokenizers_round_trip_through_auto_tokenizer(tmp_path):
    char = train_char_tokenizer([TEXT])
    char.save_pretrained(tmp_path / "char")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "char")
    ids = reloaded("Speak, speak.\n")["input_ids"]
    assert ids == char("Speak, speak.\n")["input_ids"] and len(ids) == len("Speak, speak.\n")
    assert reloaded.decode(ids) == "Speak, speak.\n"
    bpe = train_bpe_tokenizer([TEXT] * 20, vocab_size=300)
    bpe.save_pretrained(tmp_path / "bpe")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    ids = reloaded("You are all resolved")["input_ids"]
    assert ids == bpe("You are all resolved")["input_ids"] and reloaded.decode(ids) == "You are all resolved"


# -- the training script -------------------------------------------------------------------------------------
def test_training_script_runs_end_to_end_and_saves_a_reloadable_model(tmp_path, tinyshakespeare):
    source = tinyshakespeare
    if not source.exists():
        pytest.skip(f"{source} is not available")
    text_slice = tmp_path / "shakespeare_slice.txt"  # a slice in the test's temporary folder, not the repo
    text_slice.write_text(source.read_text()[:12000])
    script = load_script("train_deq_lm")
    common = [
        "--train_file",
        str(text_slice),
        "--train_tokenizer",
        "char",
        "--preset",
        TINY,
        "--block_size",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "16",
        "--max_train_steps",
        "4",
        "--unrolled_warmup_steps",
        "1",
        "--logging_steps",
        "1",
        "--checkpointing_steps",
        "2",
        "--config_overrides",
        '{"hidden_dropout": 0.1}',
        "--torch_num_threads",
        "1",
    ]
    first = tmp_path / "first"
    results = script.main([*common, "--output_dir", str(first)])

    saved = json.loads((first / "all_results.json").read_text())
    assert saved["train_steps"] == 4 and saved["grad_estimator"] == "upg"
    assert math.isfinite(saved["eval_loss"]) and saved["eval_perplexity"] == pytest.approx(
        math.exp(saved["eval_loss"])
    )
    assert (saved["dataset_name"], saved["dataset_config_name"]) == ("shakespeare_slice.txt", None)
    assert saved["eval_solver_nstep"] >= 1 and results["eval_loss"] == saved["eval_loss"]
    assert (first / "step_2" / "trainer_state.json").exists() and (first / "step_4").is_dir()
    model = AutoModelForCausalLM.from_pretrained(first)
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert isinstance(model, DEQTransformerForCausalLM) and model.config.grad_estimator == "upg"
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_dropout == 0.1
    assert model.config.trained_context_length == 32  # the block size: later tokens see that many (cropped)
    assert tokenizer.decode(tokenizer("Citizen")["input_ids"]) == "Citizen"

    assert (first / "step_2" / "processing_class" / "tokenizer_config.json").is_file()
