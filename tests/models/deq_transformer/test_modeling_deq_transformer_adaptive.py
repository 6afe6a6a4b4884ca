"""DEQ-Transformer with a tied adaptive input embedding and adaptive softmax (``config.adaptive_cutoffs``): the
shared model checks on the tiny adaptive preset, the log-probability / loss semantics against an independent
oracle (``torch.nn.AdaptiveLogSoftmaxWithLoss``), tying through save/load, generation, and config validation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from deq_transformer_helpers import DEQTransformerTesterBase, random_ids, train_tiny_char_model
from torch import nn
from transformers import AutoModelForCausalLM, pipeline

import hf_deq
from hf_deq import DEQTransformerConfig, DEQTransformerForCausalLM
from hf_deq.configuration_deq import DEQConfigError
from hf_deq.models.deq_transformer.adaptive_softmax import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax

ADAPTIVE = "test_deq_transformer_tiny_adaptive"  # vocab 99, hidden 32, cutoffs [10, 30, 60], div_val 2


@pytest.fixture(scope="module")
def trained():
    return train_tiny_char_model(ADAPTIVE, steps=60)


def adaptive_config(**overrides) -> DEQTransformerConfig:
    return hf_deq.create_config(ADAPTIVE, **overrides)


def float64_model(seed: int = 0, **overrides) -> DEQTransformerForCausalLM:
    fields = {"initializer_range": 0.15, "solver_tol": 1e-10, "solver_max_iter": 60, **overrides}
    torch.manual_seed(seed)
    return DEQTransformerForCausalLM(adaptive_config(**fields)).double().eval()


def _randomize(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))


class AdaptiveDEQTransformerModelTest(DEQTransformerTesterBase):
    preset = ADAPTIVE
    main_output = "loss"  # with labels an adaptive model returns the loss and no logits (round trips below)

    # -- adaptive-specific checks --------------------------------------------------------------------------
    def test_structure_and_tying(self):
        config = self.get_config()
        model = DEQTransformerForCausalLM(config)
        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        assert isinstance(embed, AdaptiveEmbedding) and isinstance(head, ProjectedAdaptiveLogSoftmax)
        assert embed.dims == head.dims == [32, 16, 8, 4]
        assert [layer.weight.shape for layer in embed.emb_layers] == [(10, 32), (20, 16), (30, 8), (39, 4)]
        for i in range(4):
            assert head.out_layers[i].weight is embed.emb_layers[i].weight
            assert head.out_projs[i].weight is embed.emb_projs[i].weight
        assert head.cluster.weight.shape == (2 + 1, 32)
        untied = DEQTransformerForCausalLM(self.get_config(tie_word_embeddings=False))
        assert untied.lm_head.out_layers[0].weight is not untied.model.embed_tokens.emb_layers[0].weight
        assert not untied.all_tied_weights_keys
        flat = DEQTransformerForCausalLM(self.get_config(adaptive_div_val=1))
        assert flat.model.embed_tokens.dims == [32] * 4
        assert all(isinstance(p, nn.Identity) for p in flat.lm_head.out_projs)  # no projection at full width

    def test_log_probs_normalise_and_loss_is_their_nll(self):
        model = float64_model()
        config = model.config
        ids = random_ids(config, 2, 9)
        ids[0, 2], ids[1, 4] = 3, 7  # shortlist tokens (the random ones are all in tail clusters)
        labels = ids.clone()
        labels[0, 3] = labels[1, 7] = -100
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False)
            last = model(input_ids=ids, use_cache=False, logits_to_keep=1)
            with_labels = model(input_ids=ids, labels=labels, use_cache=False)
            summed = model(input_ids=ids, labels=labels, use_cache=False, num_items_in_batch=5)
        assert out.logits.shape == (2, 9, config.vocab_size) and out.logits.dtype == torch.float64
        torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(2, 9, dtype=torch.float64))
        assert (out.logits[..., config.adaptive_cutoffs[0] :].exp().sum(-1) > 0.01).all()  # tails carry mass
        torch.testing.assert_close(last.logits[:, 0], out.logits[:, -1])
        assert with_labels.logits is None  # the loss is computed without full-vocabulary log-probabilities
        nll = F.nll_loss(out.logits[:, :-1].reshape(-1, config.vocab_size), labels[:, 1:].reshape(-1))
        torch.testing.assert_close(with_labels.loss, nll)
        total = F.nll_loss(
            out.logits[:, :-1].reshape(-1, config.vocab_size), labels[:, 1:].reshape(-1), reduction="sum"
        )
        torch.testing.assert_close(summed.loss, total / 5)
        # every cluster holds targets, so every branch of the efficient loss was checked
        targets = labels[:, 1:][labels[:, 1:] >= 0]
        assert len(torch.bucketize(targets, torch.tensor(config.adaptive_cutoffs), right=True).unique()) == 4
        with pytest.raises(ValueError, match="token id 99, outside the vocabulary"):
            model(input_ids=ids, labels=torch.full_like(ids, config.vocab_size))

    def test_softmax_matches_torch_adaptive_log_softmax(self):
        """An independent oracle: ``nn.AdaptiveLogSoftmaxWithLoss`` with the same (projected, bias-free tail)
        weights gives the same log-probabilities and target log-likelihoods."""
        vocab, hidden, cutoffs, div = 50, 16, [5, 20, 35], 2
        head = ProjectedAdaptiveLogSoftmax(vocab, hidden, cutoffs, div).double()
        _randomize(head)
        with torch.no_grad():
            for layer in head.out_layers[1:]:
                layer.bias.zero_()  # torch's tail layers have no bias
        oracle = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab, cutoffs, div_value=div, head_bias=True).double()
        with torch.no_grad():
            p0 = head.out_projs[0].weight  # (hidden, d_0)
            oracle.head.weight.copy_(torch.cat((head.out_layers[0].weight, head.cluster.weight)) @ p0.T)
            oracle.head.bias.copy_(torch.cat((head.out_layers[0].bias, head.cluster.bias)))
            for i, tail in enumerate(oracle.tail, start=1):
                tail[0].weight.copy_(head.out_projs[i].weight.T)
                tail[1].weight.copy_(head.out_layers[i].weight)
        h = torch.randn(40, hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, vocab, (40,), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            torch.testing.assert_close(head.log_prob(h), oracle.log_prob(h))
            torch.testing.assert_close(head.nll(h, target), -oracle(h, target).output)

    def test_adaptive_embedding_looks_up_and_projects_each_cluster(self):
        embed = AdaptiveEmbedding(50, 16, [5, 20, 35], 2).double()
        _randomize(embed)
        ids = torch.tensor([[0, 4, 5, 19, 20], [34, 35, 49, 7, 0]])
        starts = [0, 5, 20, 35]
        expected = torch.empty(2, 5, 16, dtype=torch.float64)
        for b in range(2):
            for t in range(5):
                token = int(ids[b, t])
                i = sum(token >= s for s in starts) - 1
                row = embed.emb_layers[i].weight[token - starts[i]]
                expected[b, t] = embed.emb_projs[i].weight @ row
        with torch.no_grad():
            torch.testing.assert_close(embed(ids), expected, rtol=0, atol=1e-12)

    def test_save_load_keeps_tying_and_outputs(self, tmp_path):
        model = float64_model(solver_tol=1e-6).float()
        ids = random_ids(model.config, 2, 8)
        with torch.no_grad():
            before = model(input_ids=ids, use_cache=False).logits
        model.save_pretrained(tmp_path / "tied")
        saved = json.loads((tmp_path / "tied" / "config.json").read_text())
        assert saved["adaptive_cutoffs"] == [10, 30, 60] and saved["adaptive_div_val"] == 2
        from safetensors.torch import load_file

        keys = set(load_file(tmp_path / "tied" / "model.safetensors"))
        assert not any(
            k.startswith(("lm_head.out_layers.", "lm_head.out_projs.")) and k.endswith("weight") for k in keys
        )
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tied").eval()
        assert loaded.lm_head.out_layers[2].weight is loaded.model.embed_tokens.emb_layers[2].weight
        assert loaded.lm_head.out_projs[3].weight is loaded.model.embed_tokens.emb_projs[3].weight
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids, use_cache=False).logits, before, rtol=0, atol=0)

        torch.manual_seed(0)
        untied = DEQTransformerForCausalLM(self.get_config(tie_word_embeddings=False)).eval()
        untied.save_pretrained(tmp_path / "untied")
        reloaded = DEQTransformerForCausalLM.from_pretrained(tmp_path / "untied").eval()
        assert reloaded.lm_head.out_layers[1].weight is not reloaded.model.embed_tokens.emb_layers[1].weight
        with torch.no_grad():
            torch.testing.assert_close(
                reloaded(input_ids=ids).logits, untied(input_ids=ids).logits, rtol=0, atol=0
            )

    def test_generation_cached_uncached_beams_sampling_and_pipeline(self, trained, tmp_path):
        model, tokenizer = trained
        tokenizer.padding_side = "left"
        prompts = tokenizer(["First Citizen:\nBe", "All:\nSpeak"], return_tensors="pt", padding=True)
        kwargs = {"max_new_tokens": 12, "do_sample": False, **prompts}
        cached = model.generate(use_cache=True, **kwargs)
        uncached = model.generate(use_cache=False, **kwargs)
        assert cached.shape == (2, 17 + 12)
        assert torch.equal(cached, uncached), tokenizer.batch_decode(torch.cat([cached, uncached]))
        assert len(set(cached[0, 17:].tolist())) > 3  # a trained model: not a constant continuation
        beams = {"max_new_tokens": 5, "num_beams": 2, "do_sample": False, **prompts}
        assert torch.equal(model.generate(use_cache=True, **beams), model.generate(use_cache=False, **beams))
        torch.manual_seed(0)
        sampled = model.generate(do_sample=True, top_k=10, temperature=0.8, max_new_tokens=4, **prompts)
        assert sampled.shape == (2, 17 + 4) and int(sampled.max()) < model.config.vocab_size

        model.save_pretrained(tmp_path)
        tokenizer.save_pretrained(tmp_path)
        generator = pipeline("text-generation", model=str(tmp_path))
        text = generator("All:\nSpeak", max_new_tokens=6, do_sample=False)[0]["generated_text"]
        ids = tokenizer("All:\nSpeak", return_tensors="pt")["input_ids"]
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)[0]
        assert text == tokenizer.decode(expected, skip_special_tokens=True) and len(text) > len("All:\nSpeak")

    def test_remote_code_bundle_carries_the_adaptive_modules(self, tmp_path):
        """The Hub bundle (``hf_deq.hub``) follows the import of ``adaptive_softmax``; its classes load the model."""
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        from hf_deq.hub import stage_model_dir

        torch.manual_seed(0)
        model = DEQTransformerForCausalLM(self.get_config()).eval()
        model.save_pretrained(tmp_path / "model")
        staged = stage_model_dir(tmp_path / "model", tmp_path / "staged")
        assert "adaptive_softmax.py" in staged
        remote_class = get_class_from_dynamic_module(
            "modeling_deq_transformer.DEQTransformerForCausalLM", str(tmp_path / "staged")
        )
        loaded = remote_class.from_pretrained(tmp_path / "staged").eval()
        assert type(loaded.lm_head).__module__.startswith("transformers_modules.")
        assert loaded.lm_head.out_layers[1].weight is loaded.model.embed_tokens.emb_layers[1].weight
        ids = random_ids(model.config, 2, 7)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0
            )

    def test_embedding_accessors_and_resize(self):
        model = DEQTransformerForCausalLM(self.get_config())
        with pytest.raises(NotImplementedError, match="adaptive_cutoffs"):
            model.resize_token_embeddings(120)
        assert model.resize_token_embeddings() is model.get_input_embeddings()  # the no-op query still works
        with pytest.raises(TypeError, match="AdaptiveEmbedding"):
            model.set_input_embeddings(nn.Embedding(99, 32))
        with pytest.raises(TypeError, match="ProjectedAdaptiveLogSoftmax"):
            model.set_output_embeddings(nn.Linear(32, 99))
        # inputs_embeds from the adaptive embedding give the same result as the ids
        ids = random_ids(model.config, 1, 6)
        model.eval()
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
            torch.testing.assert_close(
                model(inputs_embeds=embeds, use_cache=False).logits,
                model(input_ids=ids, use_cache=False).logits,
            )

    def test_invalid_adaptive_fields_raise(self):
        for bad in ([], [0, 30], [30, 10], [10, 10], [10, 99], [10.0, 30], "10,30", [True, 30]):
            with pytest.raises(
                DEQConfigError, match=r"adaptive_cutoffs=.*strictly increasing.*vocab_size=99"
            ):
                self.get_config(adaptive_cutoffs=bad)
        for bad in (0, -1, 2.0, True):
            with pytest.raises(DEQConfigError, match=r"adaptive_div_val=.*integer >= 1"):
                self.get_config(adaptive_div_val=bad)
        with pytest.raises(
            DEQConfigError, match=r"adaptive_div_val=4 .*hidden_size // adaptive_div_val\*\*3"
        ):
            self.get_config(adaptive_div_val=4)  # 32 // 4**3 == 0: the last tail cluster would have no width
        config = self.get_config(adaptive_cutoffs=(10, 30))  # a tuple is stored as a list
        assert config.adaptive_cutoffs == [10, 30]
        assert hf_deq.create_config(ADAPTIVE).adaptive_cutoffs is not config.adaptive_cutoffs
        assert hf_deq.create_config("test_deq_transformer_tiny").adaptive_cutoffs is None  # plain by default
