"""Tests of the MDEQ image classifier: the shared DEQ model checks (``DEQModelTesterMixin``) plus shapes per
resolution, weight norm, the image processor, ``pipeline``, clear input errors, and the training script end to
end (in-process; its resume, guard and multi-process behaviour are the shared loop's, tested in tests/training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from deq_model_tester import DEQModelTesterMixin
from PIL import Image
from script_loading import load_script
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

import hf_deq
from hf_deq import (
    DEQConfigError,
    MDEQConfig,
    MDEQForImageClassification,
    MDEQImageProcessor,
    MDEQModel,
    create_config,
    create_model,
)
from hf_deq.data.images import load_digits_dataset


def tiny_config(**overrides) -> MDEQConfig:
    return create_config("test_mdeq_tiny", **{"solver_on_failure": "ignore", **overrides})


def pixel_inputs(config, batch_size: int = 2, seed: int = 0, size: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = size or config.image_size
    return torch.randn(batch_size, config.num_channels, side, side, generator=g)


class MDEQModelTest(DEQModelTesterMixin):
    __test__ = True  # collected although the name does not start with "Test"
    config_class = MDEQConfig
    base_model_class = MDEQModel
    auto_classes = {MDEQModel: AutoModel, MDEQForImageClassification: AutoModelForImageClassification}
    main_output = "logits"

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def get_inputs(self, config, batch_size: int = 2, with_labels: bool = True):
        inputs = {"pixel_values": pixel_inputs(config, batch_size)}
        if with_labels:
            g = torch.Generator().manual_seed(1)
            inputs["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=g)
        return inputs

    def get_train_dataset(self, config):
        from datasets import Dataset

        digits = load_digits_dataset()["train"].select(range(8))
        processor = MDEQImageProcessor.from_model_config(config)
        pixels = processor(list(digits["image"]), return_tensors="np")["pixel_values"]
        dataset = Dataset.from_dict({"pixel_values": list(pixels), "labels": list(digits["label"])})
        dataset = dataset.with_format("torch")
        return dataset, None

    # -- MDEQ-specific ------------------------------------------------------------------------------------
    def test_output_shapes_for_each_resolution(self):
        config = create_config("test_mdeq_tiny_3branch", solver_on_failure="ignore")
        assert config.num_branches == 3 and config.downsample_times == 1
        torch.manual_seed(0)
        model = MDEQForImageClassification(config).eval()
        for side, expected in ((16, (8, 4, 2)), (15, (8, 4, 2)), (13, (7, 4, 2))):
            x = pixel_inputs(config, batch_size=3, size=side)
            with torch.no_grad():
                base = model.mdeq(pixel_values=x)
                out = model(pixel_values=x, output_hidden_states=True)
            assert len(base.hidden_states) == 3
            for maps, channels, res in zip(base.hidden_states, config.channels, expected):
                assert tuple(maps.shape) == (3, channels, res, res)
            assert base.last_hidden_state is base.hidden_states[0]
            assert tuple(base.pooler_output.shape) == (3, config.final_channels)
            assert tuple(out.logits.shape) == (3, config.num_labels)
            assert len(out.hidden_states) == 3
        with torch.no_grad():
            assert model(pixel_values=pixel_inputs(config)).hidden_states is None  # only when asked
            model.config.output_hidden_states = True  # or when the config asks
            assert len(model(pixel_values=pixel_inputs(config)).hidden_states) == 3

    def test_classifier_reads_the_base_model_pooled_features(self):
        config = tiny_config()
        torch.manual_seed(0)
        model = MDEQForImageClassification(config).eval()
        x = pixel_inputs(config)
        with torch.no_grad():
            pooled = model.mdeq(pixel_values=x).pooler_output
            logits = model(pixel_values=x).logits
        torch.testing.assert_close(logits, model.classifier(pooled))

    def test_loss_is_cross_entropy_plus_jacobian_term(self):
        config = tiny_config(jacobian_reg_weight=0.5)
        torch.manual_seed(0)
        model = MDEQForImageClassification(config).train()
        labels = torch.tensor([3, 7])
        out = model(pixel_values=pixel_inputs(config), labels=labels)
        assert out.jacobian_loss is not None and out.jacobian_loss > 0
        ce = torch.nn.functional.cross_entropy(out.logits, labels)
        torch.testing.assert_close(out.loss, ce + 0.5 * out.jacobian_loss)
        out.loss.backward()
        with torch.no_grad():  # no Jacobian term without training
            assert model.eval()(pixel_values=pixel_inputs(config), labels=labels).jacobian_loss is None

    def test_weight_norm_parametrizes_the_cell_and_survives_save_load(self, tmp_path):
        config = tiny_config(weight_norm=True)
        torch.manual_seed(0)
        model = MDEQForImageClassification(config)
        keys = list(model.state_dict())
        wn = [k for k in keys if k.endswith("parametrizations.weight.original1")]
        # conv1 + conv2 of each branch's block, and each post-fusion conv
        assert len(wn) == 2 * config.num_branches + config.num_branches
        assert all(k.startswith("mdeq.cell.") for k in wn)
        plain = tiny_config(weight_norm=False)
        assert not any("parametrizations" in k for k in MDEQForImageClassification(plain).state_dict())
        with torch.no_grad():  # make g differ from ||v||, so a load that re-initialised g would show
            for k, p in model.named_parameters():
                if k.endswith("original0"):
                    p.mul_(1.5)
        model.eval().save_pretrained(tmp_path)
        loaded = MDEQForImageClassification.from_pretrained(tmp_path).eval()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)

    def test_bf16_autocast_forward(self):
        config = tiny_config()
        torch.manual_seed(0)
        model = MDEQForImageClassification(config).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixel_values=pixel_inputs(config), labels=torch.tensor([1, 2]))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # -- clear errors -------------------------------------------------------------------------------------
    def test_wrong_channel_count_raises(self):
        config = tiny_config()  # grayscale
        model = MDEQForImageClassification(config).eval()
        rgb = torch.randn(2, 3, config.image_size, config.image_size)
        with pytest.raises(ValueError, match=r"3 channels .*num_channels=1"):
            model(pixel_values=rgb)

    def test_image_smaller_than_the_stem_allows_raises(self):
        config = create_config("test_mdeq_tiny_3branch")  # downsample x2, 3 branches: sides >= 8
        model = MDEQForImageClassification(config).eval()
        with pytest.raises(ValueError, match=r"4x4 is smaller .* >= 8"):
            model(pixel_values=torch.randn(1, 3, 4, 4))
        with pytest.raises(ValueError, match="image_size"):
            create_config("test_mdeq_tiny_3branch", image_size=4)

    def test_label_out_of_range_raises(self):
        config = tiny_config()
        model = MDEQForImageClassification(config).eval()
        with pytest.raises(ValueError, match=r"label 10 is out of range.*\[0, 9\]"):
            model(pixel_values=pixel_inputs(config), labels=torch.tensor([1, 10]))
        with pytest.raises(ValueError, match=r"label -3 is out of range"):
            model(pixel_values=pixel_inputs(config), labels=torch.tensor([-3, 1]))
        with torch.no_grad():  # -100 means "ignore this sample"
            out = model(pixel_values=pixel_inputs(config), labels=torch.tensor([-100, 1]))
        assert torch.isfinite(out.loss)

    def test_unknown_preset_raises(self, capsys):
        with pytest.raises(ValueError, match=r"unknown preset 'mdeq-huge'.*mdeq-tiny-cifar10"):
            create_model("mdeq-huge")
        script = load_script("train_mdeq_classifier")
        with pytest.raises(SystemExit) as exit_info:
            script.parse_args(["--preset", "mdeq-huge"])
        assert exit_info.value.code == 2
        assert "error: argument --preset: unknown preset 'mdeq-huge'" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("channels", []),
            ("channels", [8, 6]),
            ("num_blocks", [1, 1, 1]),
            ("head_channels", [8]),
            ("downsample_times", 3),
            ("dropout", 1.0),
            ("expansion_factor", 0),
            ("num_channels", 0),
            ("weight_norm", "yes"),
        ],
    )
    def test_invalid_architecture_field_names_itself(self, field, value):
        with pytest.raises(DEQConfigError) as info:
            tiny_config(**{field: value})
        assert info.value.field in (field, "num_groups")
        assert f"MDEQConfig.{info.value.field}=" in str(info.value) and "expected" in str(info.value)

    # -- presets ------------------------------------------------------------------------------------------
    def test_presets_and_parameter_counts(self):
        assert {"mdeq-tiny-cifar10", "mdeq-large-cifar10", "mdeq-small-imagenet", "mdeq-tiny-digits"} <= set(
            hf_deq.list_variants("mdeq")
        )
        assert {"test_mdeq_tiny", "test_mdeq_tiny_3branch"} <= set(hf_deq.list_variants(include_test=True))
        counts = {}
        for name in ("mdeq-tiny-cifar10", "mdeq-tiny-digits", "mdeq-large-cifar10", "mdeq-small-imagenet"):
            with torch.device("meta"):
                model = create_model(name)
            counts[name] = sum(p.numel() for p in model.parameters())
        # The official architecture (github.com/locuslab/mdeq, Gsunshine/phantom_grad); the papers quote ~170K,
        # ~10M and ~18M.
        assert counts == {
            "mdeq-tiny-cifar10": 158_986,
            "mdeq-tiny-digits": 158_554,
            "mdeq-large-cifar10": 11_098_398,
            "mdeq-small-imagenet": 16_808_936,
        }
        tiny = create_config("mdeq-tiny-cifar10")
        assert (tiny.grad_estimator, tiny.grad_steps, tiny.grad_damping, tiny.solver) == (
            "upg",
            5,
            0.5,
            "broyden",
        )
        assert create_config("mdeq-small-imagenet").downsample_times == 2

    # -- image processor and pipeline -------------------------------------------------------------------------
    def test_image_processor_converts_channels_resizes_and_normalizes(self):
        gray = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), mode="L")
        rgb = Image.fromarray(np.full((5, 7, 3), [255, 0, 0], dtype=np.uint8), mode="RGB")
        to_rgb = MDEQImageProcessor(size={"height": 16, "width": 16}, num_channels=3)
        out = to_rgb([gray, rgb], return_tensors="pt")["pixel_values"]
        assert tuple(out.shape) == (2, 3, 16, 16)
        torch.testing.assert_close(out[0], torch.ones(3, 16, 16))  # 255 -> 1 -> (1 - 0.5) / 0.5
        torch.testing.assert_close(out[1, 0], torch.ones(16, 16))
        torch.testing.assert_close(out[1, 1], -torch.ones(16, 16))
        to_gray = MDEQImageProcessor.from_model_config(tiny_config())
        assert to_gray.num_channels == 1 and to_gray.size["height"] == 8
        out = to_gray([rgb, np.zeros((8, 8), dtype=np.uint8)], return_tensors="pt")["pixel_values"]
        assert tuple(out.shape) == (2, 1, 8, 8)
        luma = 0.299 * 255 / 255
        assert out[0].mean().item() == pytest.approx((luma - 0.5) / 0.5, abs=0.02)
        torch.testing.assert_close(out[1], -torch.ones(1, 8, 8))
        with pytest.raises(ValueError, match="num_channels must be 1 or 3"):
            MDEQImageProcessor(num_channels=2)

    def test_image_processor_for_a_saved_model(self, tmp_path, monkeypatch):
        """The saved processor (also where AutoImageProcessor needs torchvision), else one from the config."""
        config = tiny_config()
        bare, with_processor = tmp_path / "bare", tmp_path / "with"
        config.save_pretrained(bare)
        config.save_pretrained(with_processor)
        MDEQImageProcessor(
            size={"height": 12, "width": 12}, num_channels=1, image_mean=[0.2]
        ).save_pretrained(with_processor)
        loaded = MDEQImageProcessor.for_saved_model(str(with_processor), config)
        assert (loaded.size["height"], list(loaded.image_mean)) == (12, [0.2])
        from_config = MDEQImageProcessor.for_saved_model(str(bare), config)
        assert (
            from_config.size["height"] == config.image_size
            and from_config.num_channels == config.num_channels
        )

        def needs_torchvision(*args, **kwargs):
            raise ImportError("AutoImageProcessor requires the Torchvision library")

        monkeypatch.setattr(AutoImageProcessor, "from_pretrained", needs_torchvision)
        loaded = MDEQImageProcessor.for_saved_model(str(with_processor), config)
        assert type(loaded) is MDEQImageProcessor and (loaded.size["height"], list(loaded.image_mean)) == (
            12,
            [0.2],
        )
        assert MDEQImageProcessor.for_saved_model(str(bare), config).size["height"] == config.image_size

    def test_image_processor_round_trip_through_auto_image_processor(self, tmp_path):
        processor = MDEQImageProcessor(
            size={"height": 12, "width": 12}, num_channels=1, image_mean=[0.2], image_std=[0.3]
        )
        processor.save_pretrained(tmp_path)
        tiny_config().save_pretrained(tmp_path)
        loaded = AutoImageProcessor.from_pretrained(tmp_path)
        assert type(loaded) is MDEQImageProcessor
        assert loaded.num_channels == 1 and loaded.size["height"] == 12
        assert list(loaded.image_mean) == [0.2] and list(loaded.image_std) == [0.3]
        image = Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (9, 9, 3), dtype=np.uint8), mode="RGB"
        )
        torch.testing.assert_close(
            loaded(image, return_tensors="pt")["pixel_values"],
            processor(image, return_tensors="pt")["pixel_values"],
        )

    def test_pipeline_image_classification_from_a_saved_dir(self, tmp_path):
        names = [f"digit_{i}" for i in range(10)]
        config = tiny_config(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        torch.manual_seed(0)
        model = MDEQForImageClassification(config).eval()
        processor = MDEQImageProcessor.from_model_config(config)
        model.save_pretrained(tmp_path)
        processor.save_pretrained(tmp_path)
        classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
        assert type(classifier.model) is MDEQForImageClassification
        assert type(classifier.image_processor) is MDEQImageProcessor
        image = Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8), mode="RGB"
        )
        preds = classifier(image, top_k=3)
        assert len(preds) == 3 and all(p["label"] in names for p in preds)
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits[0]
        assert preds[0]["label"] == names[int(logits.argmax())]
        assert preds[0]["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)


# -- the training script ------------------------------------------------------------------------------------
@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _script_args(output_dir: Path, *extra: str) -> list[str]:
    return [
        "--preset", "test_mdeq_tiny",
        "--dataset_name", "digits",
        "--max_train_samples", "48",
        "--max_eval_samples", "24",
        "--per_device_train_batch_size", "12",
        "--per_device_eval_batch_size", "24",
        "--max_train_steps", "4",
        "--learning_rate", "3e-3",
        "--solver_on_failure", "ignore",
        "--seed", "3",
        "--output_dir", str(output_dir),
        "--disable_tqdm",
        *extra,
    ]  # fmt: skip


def test_training_script_runs_and_saves_a_model_the_auto_classes_reload(tmp_path, fresh_accelerate_state):
    script = load_script("train_mdeq_classifier")
    full = tmp_path / "full"
    extra = [
        *("--config_overrides", '{"dropout": 0.2}', "--augment", "crop", "--checkpointing_steps", "2"),
        *("--unrolled_warmup_steps", "3", "--unrolled_warmup_depth", "2"),
    ]
    results = script.main(_script_args(full, *extra))
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "all_results.json"):
        assert (full / name).is_file(), name
    saved = json.loads((full / "all_results.json").read_text())
    assert saved["train_steps"] == 4 and 0.0 <= saved["eval_accuracy"] <= 1.0
    assert math.isfinite(saved["train_loss"]) and saved["skipped_nonfinite_steps"] == 0
    assert saved["eval_accuracy"] == results["eval_accuracy"]
    assert (saved["dataset_name"], saved["dataset_config_name"]) == ("digits", None)
    assert (full / "step_2" / "trainer_state.json").is_file() and (full / "step_4").is_dir()
    assert (full / "step_2" / "processing_class" / "preprocessor_config.json").is_file()
    assert type(AutoImageProcessor.from_pretrained(full)) is MDEQImageProcessor
    config = AutoModelForImageClassification.from_pretrained(full).config
    assert config.dropout == 0.2
    assert (config.grad_estimator, config.grad_steps) == ("upg", 5)  # back to the preset's after the warm-up
