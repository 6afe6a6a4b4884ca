"""Bad input everywhere, property-based (hypothesis).

Configs: every invalid value of a field declared by ``DEQConfig`` / ``MDEQConfig`` / ``DEQTransformerConfig``
raises ``DEQConfigError`` (a ``ValueError``) naming that field when the config is built, never an error from
inside torch later; random valid small configs build a model that runs a training forward/backward and an
evaluation forward. Inputs: non-finite pixels or embeddings, wrong shapes and dtypes, empty batches,
out-of-range labels and token ids each raise a ``ValueError`` that says what is wrong. Loading: pickled weights
(``pytorch_model.bin``) are refused."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from tiny_runs import tiny_inputs, tiny_model
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageClassification

import hf_deq
from hf_deq import (
    DEQConfig,
    DEQConfigError,
    DEQTransformerConfig,
    DEQTransformerForCausalLM,
    MDEQConfig,
    MDEQForImageClassification,
    available_grad_estimators,
)
from hf_deq.deq import normalize_name
from hf_deq.deq_fields import DEQ_FIELD_NAMES
from hf_deq.models.mdeq.modeling_mdeq import branch_resolutions

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL_RUNS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- invalid values, per field -------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
non_numbers = st.sampled_from(["3", "x", [1], {"a": 1}, (2,), b"1"])
not_int = st.one_of(non_numbers, st.sampled_from([True, False, 1.5, 2.0, NAN, INF]))
below = functools.partial(st.integers, max_value=0)  # integers < 1 for ">= 1" fields
non_finite = st.sampled_from([NAN, INF, -INF])


def int_at_least_1():
    return st.one_of(not_int, below(min_value=-(10**6)))


def number_at_least_0():
    return st.one_of(
        non_numbers, st.sampled_from([True, None]), non_finite, st.floats(max_value=-1e-9, min_value=-1e9)
    )


def number_above_0():
    return st.one_of(non_numbers, st.sampled_from([True, None, 0, 0.0]), non_finite, st.floats(-1e9, -1e-9))


def fraction_in_0_1():  # [0, 1)
    return st.one_of(non_numbers, non_finite, st.floats(1.0, 1e9), st.floats(-1e9, -1e-9), st.just(True))


def bad_name():
    registered = {*hf_deq.available_solvers(), *available_grad_estimators()}  # " NPG" is a valid name
    return st.one_of(
        st.sampled_from(["", "no_such", "ANDERSON!", None, 3, ["anderson"]]),
        st.text(max_size=6).filter(lambda text: normalize_name(text) not in registered),
    )


def not_bool():
    return st.sampled_from([0, 1, "True", None, 1.0, [True]])


SHARED_INVALID = {
    "solver": st.one_of(bad_name(), st.just("gmres")),  # gmres only serves the implicit backward
    "solver_kwargs": st.one_of(
        st.sampled_from(["memory=5", [("memory", 5)], 3]),
        st.fixed_dictionaries({"no_such_hyperparameter": st.integers()}),
        st.fixed_dictionaries({"memory": st.integers(max_value=0)}),
    ),
    "solver_max_iter": int_at_least_1(),
    "solver_eval_max_iter": int_at_least_1().filter(lambda v: v is not None),
    "solver_tol": number_at_least_0(),
    "solver_stop_mode": st.one_of(st.sampled_from(["relative", "ABS", "", None, 1]), st.text(max_size=4)),
    "solver_on_failure": st.sampled_from(["warning", "error", "", None, True, 0]),
    "compile_cell": not_bool(),
    "compile_solve": not_bool(),
    "grad_estimator": bad_name(),
    "grad_steps": int_at_least_1(),
    "grad_damping": st.one_of(
        non_numbers, non_finite, st.sampled_from([0, 0.0, True, None]), st.floats(1.0, 1e9, exclude_min=True)
    ),
    "grad_solver": bad_name(),
    "grad_max_iter": int_at_least_1(),
    "grad_tol": number_at_least_0(),
    "jacobian_reg_weight": number_at_least_0(),
}

MDEQ_INVALID = {
    "num_channels": int_at_least_1(),
    "image_size": st.one_of(not_int, st.integers(-100, 1)),  # the tiny preset needs >= 2 (2 branches)
    "channels": st.one_of(
        st.sampled_from([[], "8,16", None, 8, [8.0, 16], [True, 16]]),
        st.lists(st.integers(-5, 0), min_size=1, max_size=3),
    ),
    "num_blocks": st.one_of(st.sampled_from(["1", None, 1.0, [1], [1, 1, 1], [0, 1]]), below(min_value=-9)),
    "expansion_factor": st.one_of(number_above_0(), st.sampled_from([0.01, 1e-6])),  # width < 1
    "num_groups": st.one_of(int_at_least_1(), st.sampled_from([3, 5, 7, 32])),  # must divide 8, 16, 32
    "dropout": fraction_in_0_1(),
    "weight_norm": not_bool(),
    "downsample_times": st.one_of(not_int, st.integers(3, 100), st.integers(-100, -1)),
    "head_channels": st.one_of(
        st.sampled_from([[4], [4, 8, 8], "4,8", None, [4, 0], [4.0, 8]]), st.integers(1, 10)
    ),
    "final_channels": int_at_least_1(),
    "num_labels": st.integers(-5, 0),
}

LM_INVALID = {
    "vocab_size": int_at_least_1(),
    "hidden_size": st.one_of(int_at_least_1(), st.sampled_from([30, 33, 36, 4])),  # 4 heads: not a multiple /
    "num_attention_heads": int_at_least_1(),  # odd head size
    "intermediate_size": int_at_least_1(),
    "max_position_embeddings": int_at_least_1(),
    "trained_context_length": st.one_of(int_at_least_1(), st.integers(10**6, 10**12)),  # above max positions
    "hidden_act": st.one_of(st.sampled_from(["gelu2", "", None, 3, "GELU!"])),
    "layer_norm_eps": number_above_0(),
    "rope_theta": number_above_0(),
    "norm_position": st.sampled_from(["middle", "", None, 0, "PRE"]),
    "hidden_dropout": fraction_in_0_1(),
    "embedding_dropout": fraction_in_0_1(),
    "weight_norm": not_bool(),
    "attention_bias": not_bool(),
    "mlp_bias": not_bool(),
    "initializer_range": number_at_least_0(),
    "tie_word_embeddings": not_bool(),
    "use_cache": not_bool(),
    # the tiny base has vocab_size 99 and hidden_size 32
    "adaptive_cutoffs": st.one_of(
        st.sampled_from([[], [0], [99], [-5], [30, 30], [40, 20], "20,40", 20, [20.0], [True], [10, "30"]]),
        st.lists(st.integers(99, 10**6), min_size=1, max_size=3),
    ),
    "adaptive_div_val": int_at_least_1(),
    "pad_token_id": st.one_of(st.integers(99, 10**6), st.integers(-(10**6), -1), st.sampled_from(["0", 1.0])),
    "bos_token_id": st.one_of(st.integers(99, 10**6), st.integers(-(10**6), -1), st.sampled_from(["0", 1.0])),
    "eos_token_id": st.one_of(
        st.integers(99, 10**6), st.integers(-(10**6), -1), st.sampled_from(["0", 1.0, [1, 200], [1, "2"]])
    ),
}

MDEQ_BASE = hf_deq.variants.get_variant("test_mdeq_tiny").config_kwargs
LM_BASE = hf_deq.variants.get_variant("test_deq_transformer_tiny").config_kwargs
CASES = (
    [(DEQConfig, {}, f, s) for f, s in SHARED_INVALID.items()]
    + [(MDEQConfig, MDEQ_BASE, f, s) for f, s in {**SHARED_INVALID, **MDEQ_INVALID}.items()]
    + [(DEQTransformerConfig, LM_BASE, f, s) for f, s in {**SHARED_INVALID, **LM_INVALID}.items()]
)


@pytest.mark.parametrize(
    "config_class, base, field, values", CASES, ids=[f"{c.__name__}.{f}" for c, _, f, _ in CASES]
)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_invalid_config_value_raises_the_config_error_naming_the_field(
    config_class, base, field, values, data
):
    value = data.draw(values, label=field)
    with pytest.raises(DEQConfigError) as info:
        config_class(**{**base, field: value})
    assert isinstance(info.value, ValueError)
    assert info.value.field == field and f".{field}=" in str(info.value), str(info.value)


def test_every_declared_field_has_invalid_values_under_test():
    """Guards the table above: a field added to a config later must get its invalid values here."""
    skip = {"model_type", "transformers_version", "architectures", "head_expansion"}

    def declared(cls, parent):
        inherited = set(parent.__annotations__) | set(DEQ_FIELD_NAMES)
        return {n for n in cls.__annotations__ if not n.startswith("_")} - inherited - skip

    assert set(DEQ_FIELD_NAMES) <= set(SHARED_INVALID)
    assert declared(MDEQConfig, DEQConfig) - {"num_labels"} <= set(MDEQ_INVALID)
    assert declared(DEQTransformerConfig, DEQConfig) <= set(LM_INVALID)


def test_invalid_value_set_later_is_caught_by_set_grad_estimator_and_set_solver():
    model = tiny_model("mdeq")
    with pytest.raises(DEQConfigError, match="grad_damping"):
        model.set_grad_estimator("upg", grad_damping=0.0)
    with pytest.raises(DEQConfigError, match="solver_tol"):
        model.set_solver("anderson", solver_tol=math.nan)
    assert model.config.grad_damping == 0.5 and model.config.solver_tol == 1e-3  # unchanged


# -- valid random configs run --------------------------------------------------------------------------------
forward_solvers = st.sampled_from(["anderson", "broyden", "fixed_point"])
deq_fields = st.fixed_dictionaries(
    {
        "solver": forward_solvers,
        "solver_max_iter": st.integers(1, 4),
        "solver_tol": st.sampled_from([0.0, 1e-4, 1e-2]),
        "solver_stop_mode": st.sampled_from(["rel", "abs"]),
        "solver_on_failure": st.just("ignore"),
        "grad_estimator": st.sampled_from(available_grad_estimators()),
        "grad_steps": st.integers(1, 3),
        "grad_damping": st.floats(0.1, 1.0),
        "grad_max_iter": st.integers(1, 4),
        "jacobian_reg_weight": st.sampled_from([0.0, 0.1]),
    }
)


@st.composite
def mdeq_configs(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    n = draw(st.integers(1, 3))
    downsample = draw(st.integers(0, 2))
    minimum = 2 ** (downsample + n - 1)
    return MDEQConfig(
        **draw(deq_fields),
        num_groups=groups,
        channels=[groups * draw(st.integers(1, 3)) for _ in range(n)],
        num_blocks=draw(st.one_of(st.integers(1, 2), st.lists(st.integers(1, 2), min_size=n, max_size=n))),
        expansion_factor=draw(st.sampled_from([1, 2])),
        head_channels=[draw(st.integers(1, 4)) for _ in range(n)],
        final_channels=draw(st.integers(1, 8)),
        downsample_times=downsample,
        num_channels=draw(st.integers(1, 3)),
        image_size=draw(st.integers(minimum, minimum + 3)),
        dropout=draw(st.sampled_from([0.0, 0.2])),
        weight_norm=draw(st.booleans()),
        num_labels=draw(st.integers(2, 4)),
    )


@st.composite
def lm_configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    return DEQTransformerConfig(
        **draw(deq_fields),
        vocab_size=draw(st.integers(2, 40)),
        num_attention_heads=heads,
        hidden_size=heads * draw(st.sampled_from([2, 4, 8])),
        intermediate_size=draw(st.integers(1, 24)),
        max_position_embeddings=draw(st.integers(2, 12)),
        hidden_act=draw(st.sampled_from(["gelu", "relu", "silu", "tanh"])),
        norm_position=draw(st.sampled_from(["pre", "post"])),
        hidden_dropout=draw(st.sampled_from([0.0, 0.3])),
        embedding_dropout=draw(st.sampled_from([0.0, 0.3])),
        weight_norm=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()),
    )


def _train_and_eval(model, inputs):
    model.train()
    outputs = model(**inputs)
    assert math.isfinite(float(outputs.loss.detach())), outputs.loss
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.solver_residual.shape == outputs.solver_nstep.shape == (inputs["labels"].shape[0],)
    return outputs


@MODEL_RUNS
@given(config=mdeq_configs(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_valid_random_mdeq_configs_build_and_run(config, batch, seed):
    torch.manual_seed(seed)
    model = MDEQForImageClassification(config)
    g = torch.Generator().manual_seed(seed)
    side = config.image_size
    if batch == 1 and branch_resolutions(config, side, side)[-1] == (1, 1):
        with pytest.raises(ValueError, match="BatchNorm needs more than one value per channel in training"):
            model(pixel_values=torch.zeros(1, config.num_channels, side, side))
        batch = 2
    pixels = torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)
    labels = torch.randint(0, config.num_labels, (batch,), generator=g)
    outputs = _train_and_eval(model, {"pixel_values": pixels, "labels": labels})
    assert outputs.logits.shape == (batch, config.num_labels)


@MODEL_RUNS
@given(config=lm_configs(), batch=st.integers(1, 3), data=st.data())
def test_valid_random_lm_configs_build_and_run(config, batch, data):
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    model = DEQTransformerForCausalLM(config)
    length = data.draw(st.integers(2, config.max_position_embeddings))
    ids = torch.randint(0, config.vocab_size, (batch, length))
    with pytest.raises(ValueError, match="labels need seq_len >= 2"):
        model(input_ids=ids[:, :1], labels=ids[:, :1])
    outputs = _train_and_eval(model, {"input_ids": ids, "labels": ids})
    assert outputs.logits.shape == (batch, length, config.vocab_size)


# -- bad inputs -----------------------------------------------------------------------------------------------
@functools.cache
def _eval_model(kind: str):
    return tiny_model(kind, solver_max_iter=3).eval()


def _raises(pattern: str, model, **inputs):
    with pytest.raises(ValueError, match=pattern):
        with torch.no_grad():
            model(**inputs)


@FAST
@given(
    bad=st.sampled_from([NAN, INF, -INF]),
    index=st.tuples(st.integers(0, 2), st.integers(0, 7), st.integers(0, 7)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_non_finite_pixel_values_raise(bad, index, dtype):
    model = _eval_model("mdeq")
    pixels = torch.randn(3, 1, 8, 8, dtype=dtype)
    pixels[index[0], 0, index[1], index[2]] = bad
    _raises("pixel_values contain NaN or infinite values", model, pixel_values=pixels)


@FAST
@given(shape=st.lists(st.integers(1, 9), min_size=0, max_size=6).filter(lambda s: len(s) != 4))
def test_pixel_values_of_the_wrong_rank_raise(shape):
    _raises(r"pixel_values must have shape \(batch, num_channels, height, width\)", _eval_model("mdeq"),
            pixel_values=torch.zeros(shape))  # fmt: skip


@FAST
@given(channels=st.integers(2, 5), side=st.integers(8, 12))
def test_pixel_values_with_the_wrong_channel_count_raise(channels, side):
    _raises("channels but the model expects config.num_channels=1", _eval_model("mdeq"),
            pixel_values=torch.zeros(2, channels, side, side))  # fmt: skip


@FAST
@given(side=st.integers(1, 1), other=st.integers(1, 12))
def test_images_too_small_for_the_branches_raise(side, other):
    _raises("smaller than the stem and branches allow", _eval_model("mdeq"),
            pixel_values=torch.zeros(1, 1, side, other))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.int32, torch.bool, torch.complex64])
def test_pixel_values_of_a_non_float_dtype_raise(dtype):
    _raises(f"floating-point tensor, got dtype {dtype}", _eval_model("mdeq"),
            pixel_values=torch.zeros(2, 1, 8, 8, dtype=dtype))  # fmt: skip


def test_float64_or_bfloat16_pixels_run_on_a_float32_model():
    model = _eval_model("mdeq")
    with torch.no_grad():
        ref = model(pixel_values=torch.ones(2, 1, 8, 8)).logits
        for dtype in (torch.float64, torch.bfloat16):
            out = model(pixel_values=torch.ones(2, 1, 8, 8, dtype=dtype)).logits
            torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("kind", ["mdeq", "lm"])
def test_empty_batches_raise(kind):
    model = _eval_model(kind)
    if kind == "mdeq":
        _raises("empty batch", model, pixel_values=torch.zeros(0, 1, 8, 8))
    else:
        _raises("input_ids is empty", model, input_ids=torch.zeros(0, 4, dtype=torch.long))
        _raises("input_ids is empty", model, input_ids=torch.zeros(2, 0, dtype=torch.long))
        _raises("inputs_embeds is empty", model, inputs_embeds=torch.zeros(0, 4, 32))
        _raises("inputs_embeds is empty", model, inputs_embeds=torch.zeros(2, 0, 32))


@FAST
@given(label=st.one_of(st.integers(10, 10**9), st.integers(-(10**9), -101), st.integers(-99, -1)))
def test_out_of_range_labels_raise(label):
    model = _eval_model("mdeq")
    labels = torch.tensor([1, label, 2])
    _raises(rf"label {label} is out of range: labels must be in \[0, 9\]", model,
            pixel_values=torch.zeros(3, 1, 8, 8), labels=labels)  # fmt: skip


@FAST
@given(n=st.integers(1, 6).filter(lambda n: n != 3))
def test_labels_of_the_wrong_length_raise(n):
    _raises(r"one class index per image, shape \(3,\)", _eval_model("mdeq"),
            pixel_values=torch.zeros(3, 1, 8, 8), labels=torch.zeros(n, dtype=torch.long))  # fmt: skip


def test_labels_that_do_not_fit_other_problem_types_raise():
    torch.manual_seed(0)
    multi = MDEQForImageClassification(
        hf_deq.create_config("test_mdeq_tiny", problem_type="multi_label_classification")
    )
    _raises(r"multi_label_classification must have shape \(2, 10\)", multi.eval(),
            pixel_values=torch.zeros(2, 1, 8, 8), labels=torch.zeros(2, 3))  # fmt: skip
    _raises(
        "labels contain NaN", multi, pixel_values=torch.zeros(2, 1, 8, 8), labels=torch.full((2, 10), NAN)
    )
    single = MDEQForImageClassification(
        hf_deq.create_config("test_mdeq_tiny", problem_type="single_label_classification")
    )
    _raises(
        "integer class indices", single.eval(), pixel_values=torch.zeros(2, 1, 8, 8), labels=torch.zeros(2)
    )


@FAST
@given(token=st.one_of(st.integers(99, 10**12), st.integers(-(10**12), -1)), where=st.integers(0, 5))
def test_out_of_range_token_ids_raise(token, where):
    ids = torch.randint(0, 99, (2, 6))
    ids[1, where] = token
    _raises(f"token id {token}, outside the vocabulary", _eval_model("lm"), input_ids=ids)


@FAST
@given(label=st.one_of(st.integers(99, 10**9), st.integers(-(10**9), -101), st.integers(-99, -1)))
def test_out_of_range_lm_labels_raise(label):
    ids = torch.randint(0, 99, (2, 6))
    labels = ids.clone()
    labels[0, 3] = label
    _raises(rf"labels contain token id {label}, outside the vocabulary \[0, 99\)", _eval_model("lm"),
            input_ids=ids, labels=labels)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.int16, torch.uint8])
def test_token_ids_of_a_non_index_dtype_raise(dtype):
    model = _eval_model("lm")
    _raises(f"input_ids must be integer token ids \\(torch.long\\), got dtype {dtype}", model,
            input_ids=torch.ones(2, 4, dtype=dtype))  # fmt: skip
    _raises(f"labels must be integer token ids \\(torch.long\\), got dtype {dtype}", model,
            input_ids=torch.ones(2, 4, dtype=torch.long), labels=torch.ones(2, 4, dtype=dtype))  # fmt: skip


@FAST
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).filter(lambda s: len(s) != 2))
def test_token_ids_of_the_wrong_rank_raise(shape):
    _raises(r"input_ids must have shape \(batch, seq_len\)", _eval_model("lm"),
            input_ids=torch.zeros(shape, dtype=torch.long))  # fmt: skip


@FAST
@given(
    bad=st.sampled_from([NAN, INF, -INF]),
    index=st.tuples(st.integers(0, 1), st.integers(0, 4), st.integers(0, 31)),
)
def test_non_finite_inputs_embeds_raise(bad, index):
    embeds = torch.randn(2, 5, 32)
    embeds[index] = bad
    _raises("inputs_embeds contain NaN or infinite values", _eval_model("lm"), inputs_embeds=embeds)


@FAST
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).filter(lambda s: len(s) != 3 or s[-1] != 32))
def test_inputs_embeds_of_the_wrong_shape_raise(shape):
    _raises(r"inputs_embeds must have shape \(batch, seq_len, 32\)", _eval_model("lm"),
            inputs_embeds=torch.zeros(shape))  # fmt: skip


def test_inputs_embeds_dtypes():
    model = _eval_model("lm")
    _raises(
        "inputs_embeds must be a floating-point tensor",
        model,
        inputs_embeds=torch.ones(2, 3, 32, dtype=torch.long),
    )
    with torch.no_grad():
        ref = model(inputs_embeds=torch.ones(2, 3, 32)).logits
        torch.testing.assert_close(model(inputs_embeds=torch.ones(2, 3, 32, dtype=torch.float64)).logits, ref)
    _raises("exactly one of input_ids and inputs_embeds", model)


@FAST
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 9)).filter(lambda s: s != (2, 4)))
def test_attention_mask_of_the_wrong_shape_raises(shape):
    _raises("attention_mask must have shape", _eval_model("lm"),
            input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(shape))  # fmt: skip


@FAST
@given(extra=st.integers(1, 20))
def test_sequences_longer_than_the_positions_raise(extra):
    _raises("max_position_embeddings=64", _eval_model("lm"),
            input_ids=torch.zeros(1, 64 + extra, dtype=torch.long))  # fmt: skip


@FAST
@given(n=st.integers(1, 8).filter(lambda n: n != 6))
def test_lm_labels_of_the_wrong_shape_raise(n):
    _raises(r"labels must have shape \(batch, seq_len\) = \(2, 6\)", _eval_model("lm"),
            input_ids=torch.ones(2, 6, dtype=torch.long), labels=torch.ones(2, n, dtype=torch.long))  # fmt: skip


# -- loading refuses pickled weights ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, auto_classes",
    [("mdeq", (AutoModelForImageClassification, AutoModel)), ("lm", (AutoModelForCausalLM, AutoModel))],
)
def test_loading_refuses_pickled_weights(tmp_path, kind, auto_classes):
    model = tiny_model(kind)
    good = tmp_path / "good"
    model.save_pretrained(good)
    assert type(model).from_pretrained(good).config.grad_estimator == model.config.grad_estimator

    pickled = tmp_path / "pickled"
    model.save_pretrained(pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    for loader in (type(model), type(model).__mro__[1], *auto_classes):
        with pytest.raises(OSError, match=r"only pickled PyTorch weights \(pytorch_model.bin\)"):
            loader.from_pretrained(pickled)
    with pytest.raises(OSError, match="not a safetensors file"):
        type(model).from_pretrained(pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="use_safetensors=False"):
        type(model).from_pretrained(good, use_safetensors=False)

    # A config that points transformers at a pickle is refused too; both formats present: safetensors is read.
    named = tmp_path / "named"
    model.save_pretrained(named)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(OSError, match="transformers_weights='adapter_model.bin'"):
        type(model).from_pretrained(named)
    both = tmp_path / "both"
    model.save_pretrained(both)
    torch.save({"not": torch.zeros(1)}, both / "pytorch_model.bin")
    loaded = type(model).from_pretrained(both)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_inputs_helper_shapes():
    """The tiny inputs used across these tests match their models (guards the helpers)."""
    for kind in ("mdeq", "lm"):
        model = _eval_model(kind)
        with torch.no_grad():
            assert math.isfinite(float(model(**tiny_inputs(kind, model.config)).loss))
