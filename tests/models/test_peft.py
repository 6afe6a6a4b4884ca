"""LoRA (``peft``) on both families: adapters on the weight-tied DEQ-Transformer block (attention and MLP
projections) and on the MDEQ cell's convolutions train through ``Trainer``, leave the base weights untouched, keep
the solver converging, save and load as adapters, and merge into the base weights without changing the outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from deq_transformer_helpers import TEXT, train_tiny_char_model
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import hf_deq
from hf_deq import DEQTransformerForCausalLM, MDEQForImageClassification, MDEQImageProcessor
from hf_deq.modeling_utils import count_parameters

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

LM_TARGETS = ["qkv_proj", "o_proj", "fc_in", "fc_out"]  # the block's attention and MLP projections
TOL = 1e-5  # the solver tolerances of the fine-tuning runs below
MDEQ_TOL = 1e-3


def _trainer(model, dataset, collator, tmp_path, steps: int, lr: float) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=lr,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def _solver_stats(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return out.solver_nstep, out.solver_residual


def report(when: str, nstep: torch.Tensor, residual: torch.Tensor, tol: float) -> None:
    """Print the solver statistics (shown with ``pytest -s``)."""
    print(
        f"{when} LoRA fine-tuning: solver_nstep mean {nstep.float().mean():.1f} max {int(nstep.max())}, "
        f"solver_residual median {residual.median():.2g} max {residual.max():.2g}, "
        f"{int((residual <= tol).sum())}/{residual.numel()} within tol {tol:g}"
    )


def _frozen_weights(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}


# -- DEQ-Transformer -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_base(tmp_path_factory):
    """A tiny char-level DEQ-Transformer trained for a few steps (random tiny models have trivial dynamics),
    saved as a pretrained folder: ``(path, tokenizer, blocks)``."""
    model, tokenizer = train_tiny_char_model("test_deq_transformer_tiny", steps=40)
    model.set_solver("anderson", solver_tol=TOL, solver_max_iter=60, solver_on_failure="ignore")
    path = tmp_path_factory.mktemp("lm_base")
    model.save_pretrained(path)
    ids = tokenizer(TEXT * 2)["input_ids"]
    blocks = [ids[i : i + 24] for i in range(0, len(ids) - 24, 12)]
    return path, tokenizer, blocks


def _lm_probe(blocks) -> dict[str, torch.Tensor]:
    ids = torch.as_tensor(blocks)
    return {"input_ids": ids, "labels": ids}


def test_lora_on_the_weight_tied_block_trains_with_trainer_and_the_solver_still_converges(lm_base, tmp_path):
    from datasets import Dataset

    path, tokenizer, blocks = lm_base
    model = DEQTransformerForCausalLM.from_pretrained(path)
    probe = _lm_probe(blocks)
    nstep_before, residual_before = _solver_stats(model, probe)
    with torch.no_grad():
        loss_before = float(model(**probe).loss)
    converged_before = residual_before <= TOL
    report("before", nstep_before, residual_before, TOL)
    assert converged_before.float().mean() > 0.8, residual_before  # the base model converges on most blocks

    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LM_TARGETS)
    peft_model = get_peft_model(model, config)
    adapted = sorted(n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))
    assert adapted == sorted(
        f"base_model.model.model.block.{p}"
        for p in ("attn.qkv_proj", "attn.o_proj", "mlp.fc_in", "mlp.fc_out")
    )
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    expected = 4 * ((hidden + 3 * hidden) + (hidden + hidden) + (hidden + inner) + (inner + hidden))
    assert count_parameters(peft_model, trainable_only=True) == expected
    assert peft_model.get_nb_trainable_parameters() == (expected, count_parameters(peft_model))

    frozen = _frozen_weights(peft_model)
    dataset = Dataset.from_dict({"input_ids": blocks})
    trainer = _trainer(
        peft_model, dataset, DataCollatorForLanguageModeling(tokenizer, mlm=False), tmp_path, 8, 1e-2
    )
    result = trainer.train()
    assert result.global_step == 8 and math.isfinite(result.training_loss)

    assert all(torch.equal(frozen[n], p) for n, p in peft_model.named_parameters() if "lora_" not in n)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 4 and all(bool(p.abs().sum() > 0) for p in lora_b)  # every adapter learned
    nstep_after, residual_after = _solver_stats(peft_model, probe)
    with torch.no_grad():
        out = peft_model(**probe)
    assert float(out.loss) < loss_before  # fine-tuning fitted the text
    assert (
        out.solver_nstep.shape == out.solver_residual.shape == (len(blocks),)
    )  # PeftModel forwards the stats
    report("after", nstep_after, residual_after, TOL)
    assert (residual_after <= TOL).float().mean() >= converged_before.float().mean() - 0.1, residual_after
    assert float(nstep_after.float().mean()) <= 1.5 * float(nstep_before.float().mean())


@pytest.fixture
def lm_adapter(lm_base):
    """A base model with non-zero LoRA adapters (``init_lora_weights=False``: ``lora_B`` is random, so the
    adapter changes the outputs) and the probe inputs."""
    path, _, blocks = lm_base
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(DEQTransformerForCausalLM.from_pretrained(path), config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.05)  # a small adapter: the fine-tuned map stays a contraction
    return peft_model.eval(), _lm_probe(blocks[:6])


def test_lora_adapter_saves_and_loads(lm_base, lm_adapter, tmp_path):
    path, _, _ = lm_base
    peft_model, probe = lm_adapter
    with torch.no_grad():
        expected = peft_model(**probe)
        with peft_model.disable_adapter():
            base = peft_model(**probe)
    assert not torch.allclose(expected.logits, base.logits, atol=1e-3)  # the adapter matters

    peft_model.save_pretrained(tmp_path / "adapter")
    names = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)  # the adapter only, no base weights

    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(path), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        again = reloaded(**probe)
    torch.testing.assert_close(again.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(again.solver_residual, expected.solver_residual, rtol=0, atol=0)


def test_merged_lora_gives_the_outputs_of_the_unmerged_adapter(lm_adapter, tmp_path):
    peft_model, probe = lm_adapter
    with torch.no_grad():
        unmerged = peft_model(**probe)
    merged = peft_model.merge_and_unload()
    assert type(merged) is DEQTransformerForCausalLM
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    with torch.no_grad():
        out = merged(**probe)
    assert bool((out.solver_residual <= TOL).all()) and bool((unmerged.solver_residual <= TOL).all())
    torch.testing.assert_close(out.logits, unmerged.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.loss, unmerged.loss, rtol=1e-5, atol=1e-5)

    merged.save_pretrained(tmp_path / "merged")  # a plain hf_deq model again
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(**probe)
    torch.testing.assert_close(reloaded.logits, out.logits, rtol=0, atol=0)


def test_lora_on_a_weight_normalised_block_after_remove_weight_norm(tmp_path):
    """With weight norm (``w = g v / ||v||``, a parametrisation) peft would merge into a recomputed tensor and
    lose the adapter; ``remove_weight_norm`` bakes the frozen weights first, then merging is exact."""
    config = hf_deq.create_config(
        "test_deq_transformer_tiny_post", solver="anderson", solver_tol=1e-6, solver_max_iter=60
    )
    torch.manual_seed(0)
    model = DEQTransformerForCausalLM(config).eval()
    probe = _lm_probe(
        torch.randint(0, config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        weight_normed = model(**probe)
    model.remove_weight_norm()
    assert model.config.weight_norm is False
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    with torch.no_grad():
        baked = model(**probe)
    torch.testing.assert_close(baked.logits, weight_normed.logits, rtol=1e-5, atol=1e-5)

    torch.manual_seed(1)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=LM_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, lora).eval()
    with torch.no_grad():
        unmerged = peft_model(**probe)
        with peft_model.disable_adapter():
            base = peft_model(**probe)
    assert not torch.allclose(unmerged.logits, base.logits, atol=1e-3)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        out = merged(**probe)
    torch.testing.assert_close(out.logits, unmerged.logits, rtol=1e-4, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert reloaded.config.weight_norm is False
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**probe).logits, out.logits, rtol=0, atol=0)


# -- MDEQ ----------------------------------------------------------------------------------------------------
def _cell_convolutions(model: nn.Module) -> list[str]:
    """The equilibrium cell's convolutions (residual blocks and multiscale fusion)."""
    return [name for name, m in model.named_modules() if ".cell." in name and isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def mdeq_base(tmp_path_factory):
    """A tiny MDEQ trained for a few steps on 64 of scikit-learn's digits (at random initialisation its cell is
    far from a contraction), with weight norm removed, saved as a pretrained folder: ``(path, dataset)``."""
    from datasets import Dataset
    from PIL import Image
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()  # module fixtures run before the per-test one-thread fixture
    torch.set_num_threads(1)
    data = load_digits()
    config = hf_deq.create_config("test_mdeq_tiny", solver_on_failure="ignore")
    processor = MDEQImageProcessor.from_model_config(config)
    images = [
        Image.fromarray(p, mode="L") for p in np.round(data.images[:64] * (255.0 / 16.0)).astype(np.uint8)
    ]
    pixels = torch.as_tensor(processor(images, return_tensors="np")["pixel_values"])
    labels = torch.as_tensor(data.target[:64])
    torch.manual_seed(0)
    model = MDEQForImageClassification(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        batch = torch.randint(0, 64, (16,), generator=generator)
        model(pixel_values=pixels[batch], labels=labels[batch]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # frozen base weights: weight norm has nothing to do, and peft merges adapters into plain weights only
    model.remove_weight_norm()
    model.set_solver("anderson", solver_tol=MDEQ_TOL, solver_max_iter=40, solver_on_failure="ignore")
    path = tmp_path_factory.mktemp("mdeq_base")
    model.save_pretrained(path)
    torch.set_num_threads(threads)
    dataset = Dataset.from_dict({"pixel_values": list(pixels.numpy()), "labels": labels.tolist()})
    return path, dataset.with_format("torch")


def _mdeq_probe(dataset, n: int = 32) -> dict[str, torch.Tensor]:
    return {"pixel_values": dataset["pixel_values"][:n], "labels": dataset["labels"][:n]}


def test_lora_on_the_mdeq_cell_convolutions(mdeq_base, tmp_path):
    path, dataset = mdeq_base
    model = MDEQForImageClassification.from_pretrained(path)
    assert model.config.weight_norm is False
    probe = _mdeq_probe(dataset)
    nstep_before, residual_before = _solver_stats(model, probe)
    converged_before = residual_before <= MDEQ_TOL
    report("before", nstep_before, residual_before, MDEQ_TOL)
    assert converged_before.float().mean() > 0.8, residual_before  # the base model converges on most images
    targets = _cell_convolutions(model)
    assert len(targets) >= 6
    # Training updates the BatchNorm statistics of the stem and the head: they are saved with the adapter.
    batch_norms = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=targets, modules_to_save=["classifier", *batch_norms])
    peft_model = get_peft_model(model, lora)
    frozen = _frozen_weights(peft_model)

    result = _trainer(peft_model, dataset, None, tmp_path, 4, 1e-2).train()
    assert result.global_step == 4 and math.isfinite(result.training_loss)
    changed = [n for n, p in peft_model.named_parameters() if n in frozen and not torch.equal(frozen[n], p)]
    assert changed and all("modules_to_save" in n for n in changed), (
        changed
    )  # the base weights stay as they were
    assert all(bool(p.abs().sum() > 0) for n, p in peft_model.named_parameters() if "lora_B" in n)
    nstep_after, residual_after = _solver_stats(peft_model, probe)
    report("after", nstep_after, residual_after, MDEQ_TOL)
    assert (residual_after <= MDEQ_TOL).float().mean() >= converged_before.float().mean() - 0.1, (
        residual_after
    )
    assert float(nstep_after.float().mean()) <= 1.5 * float(nstep_before.float().mean())

    # Merged and unmerged convolutions differ by rounding: compare equilibria solved far below MDEQ_TOL, so
    # that the solver's stopping point is not what the comparison measures.
    tight = {"solver_tol": 1e-7, "solver_eval_max_iter": 150}
    peft_model.config.update(tight)
    with torch.no_grad():
        unmerged = peft_model(**probe)
    solved = unmerged.solver_residual <= 1e-5  # an image whose solve stalls above that is left out
    assert solved.float().mean() >= 0.9, unmerged.solver_residual
    peft_model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForImageClassification.from_pretrained(path)
    base.config.update(tight)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**probe).logits, unmerged.logits, rtol=0, atol=0)

    merged = peft_model.merge_and_unload()
    assert type(merged) is MDEQForImageClassification
    with torch.no_grad():
        out = merged(**probe)
    torch.testing.assert_close(out.logits[solved], unmerged.logits[solved], rtol=1e-4, atol=1e-4)


def test_lora_on_a_weight_normalised_layer_is_refused_and_merges_exactly_after_remove_weight_norm(tmp_path):
    """peft merges with ``base_layer.weight.data += delta``; a weight-normalised weight is recomputed from ``g``
    and ``v`` at each access, so the merge would drop the adapter (merged and unmerged logits differed by 1.43 on
    an MDEQ). Adding the adapter is refused with the reason; after ``remove_weight_norm`` the merge is exact."""
    torch.manual_seed(0)
    # tol 0: merged and unmerged models run the same 30 solver steps, so their outputs differ by rounding only
    fields = {"solver_tol": 0.0, "solver_max_iter": 30, "solver_on_failure": "ignore"}
    model = hf_deq.create_model("test_mdeq_tiny", **fields).double().eval()
    assert model.config.weight_norm is True
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=_cell_convolutions(model), init_lora_weights=False)
    with pytest.raises(ValueError, match=r"weight-normalised .*Call model\.remove_weight_norm\(\)"):
        get_peft_model(model, lora)
    lm = hf_deq.create_model("test_deq_transformer_tiny_post")
    with pytest.raises(ValueError, match="remove_weight_norm"):
        get_peft_model(lm, LoraConfig(r=2, target_modules=LM_TARGETS))

    model = hf_deq.create_model("test_mdeq_tiny", **fields).double().eval()
    model.remove_weight_norm()
    pixels = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    peft_model = get_peft_model(model, lora).eval()
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.05)  # a small adapter
    with torch.no_grad():
        unmerged = peft_model(pixel_values=pixels)
        with peft_model.disable_adapter():
            base = peft_model(pixel_values=pixels)
    assert not torch.allclose(unmerged.logits, base.logits, atol=1e-3)  # the adapter matters
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        merged = peft_model.merge_and_unload()(pixel_values=pixels)
    torch.testing.assert_close(merged.logits, unmerged.logits, rtol=0, atol=1e-5)

    # Loading the adapter onto a base that still has weight norm is refused too.
    with pytest.raises(ValueError, match="remove_weight_norm"):
        PeftModel.from_pretrained(hf_deq.create_model("test_mdeq_tiny"), tmp_path / "adapter")
