"""The pieces of a model card, each from the config, the run's ``all_results.json`` (one fixed set of keys, written
by both training scripts) or the training recipe (the script's flags): the dataset, the evaluation results, the
recipe table, the architecture, solver and estimator tables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .registry import CardFacts
from .solver_stats import number

#: file suffixes of local data files, and the ``datasets`` builder that loads each
DATA_FILE_BUILDERS = {
    ".txt": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
#: training-script flags that name local data (the run did not load a Hub dataset when one is set)
LOCAL_DATA_FLAGS = ("train_file", "train_dir")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def fmt(value: Any, digits: int = 4) -> str:
    """A number, flag or collection as card text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e9:
            return f"{int(value):,}" if abs(value) >= 1e4 else str(int(value))
        if 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v, digits)}" for k, v in value.items()) or "defaults"
    return str(value)


def duration(seconds: Any) -> str | None:
    seconds = number(seconds)
    if seconds is None:
        return None
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if not hours and not minutes:
        return f"{seconds:.1f} s"
    text = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
    return f"{text} ({seconds:.0f} s)"


# -- dataset ----------------------------------------------------------------------------------------------------


def _is_local(name: str, training: Mapping[str, Any]) -> bool:
    if any(training.get(flag) for flag in LOCAL_DATA_FLAGS) and not training.get("dataset_name"):
        return True
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).suffix.lower() in DATA_FILE_BUILDERS
        or not _HUB_ID.fullmatch(name)
    )


def dataset_info(facts: CardFacts, metrics: Mapping[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    """What the run trained on, from ``dataset_name`` / ``dataset_config_name`` in ``all_results.json`` (else in
    the recipe, else the recipe's local data flag): ``kind`` is ``"hub"`` (a Hub dataset id: linked, and listed
    in the card's ``datasets:`` metadata), ``"builtin"`` (a name the family's script loads itself, e.g.
    ``digits``), ``"local"`` (a local file or folder: only its name is shown) or ``None`` (not recorded).
    ``id`` is set for Hub datasets only; ``type`` / ``name`` / ``config`` / ``split`` are the model-index
    dataset fields (``type`` of a non-Hub dataset is the ``datasets`` builder, or ``custom``); ``label`` is the
    short name and ``text`` the sentence the card shows."""
    name = metrics.get("dataset_name") or training.get("dataset_name")
    config_name = metrics.get("dataset_config_name") or training.get("dataset_config_name")
    if not name:
        name = next((training[flag] for flag in LOCAL_DATA_FLAGS if training.get(flag)), None)
    info: dict[str, Any] = {
        "kind": None,
        "id": None,
        "type": "custom",
        "name": "not recorded",
        "label": None,
        "text": None,
        "config": str(config_name) if config_name else None,
        "split": "validation",
        "num_examples": metrics.get("eval_num_examples"),
    }
    if not name:
        info["config"] = None
        return info
    name = str(name)
    if name in facts.builtin_datasets:
        description = facts.builtin_datasets[name]
        info.update(kind="builtin", name=f"{name}: {description}", label=name, config=None)
        info["text"] = f"`{name}`, {description}, loaded by the training script itself (not a Hub dataset)"
    elif _is_local(name, training):
        file_name = Path(name.rstrip("/\\")).name or name  # never a local absolute path in a public card
        info.update(kind="local", name=file_name, label=file_name, config=None)
        info["type"] = DATA_FILE_BUILDERS.get(Path(file_name).suffix.lower(), "custom")
        info["text"] = f"local data, `{file_name}` (not a Hub dataset)"
    else:
        info.update(kind="hub", id=name, type=name, name=name, label=name)
        config = f" (configuration `{info['config']}`)" if info["config"] else ""
        info["text"] = f"[{name}](https://huggingface.co/datasets/{name}){config} from the Hugging Face Hub"
    return info


# -- evaluation results -----------------------------------------------------------------------------------------


def eval_results(facts: CardFacts, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"type", "name", "value", "headline"}]`` for each of the family's metrics the run recorded."""
    results = []
    for metric in facts.metrics:
        value = number(metrics.get(metric.key))
        if value is not None:
            results.append(
                {
                    "type": metric.type,
                    "name": metric.name,
                    "value": round(value, 4),
                    "headline": metric.headline,
                }
            )
    return results


# -- training recipe --------------------------------------------------------------------------------------------

OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def _optimizer(training: Mapping[str, Any]) -> str | None:
    optimizer = training.get("optimizer")
    if optimizer is None and "adam_beta1" in training:
        optimizer = "adamw"
    if not optimizer:
        return None
    name = OPTIMIZER_NAMES.get(str(optimizer).lower(), str(optimizer))
    if name == "SGD" and training.get("momentum") is not None:
        name += f" (momentum {fmt(training['momentum'])}{', Nesterov' if training.get('nesterov') else ''})"
    elif name in ("AdamW", "Adam") and training.get("adam_beta1") is not None:
        name += f" (betas {fmt(training['adam_beta1'])}, {fmt(training.get('adam_beta2'))})"
    return name


def recipe_rows(training: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rows of the training-recipe table (only what is known): the flags from ``training``, what the run
    measured from ``metrics``."""
    rows: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append((label, value if isinstance(value, str) else fmt(value)))

    max_steps = training.get("max_train_steps")
    add("preset", training.get("preset"))
    add("started from", training.get("model_name_or_path"))
    add(
        "optimisation steps",
        metrics.get("train_steps") or (max_steps if max_steps not in (None, -1) else None),
    )
    epoch = number(metrics.get("epoch"))
    add("epochs", round(epoch, 2) if epoch is not None else None)
    add("training samples", metrics.get("train_samples"))
    add("batch size per device", training.get("per_device_train_batch_size"))
    add("gradient accumulation", training.get("gradient_accumulation_steps"))
    add("sequence length", training.get("block_size"))
    add("processes", metrics.get("num_processes") or training.get("num_processes"))
    add("threads per process", metrics.get("torch_num_threads"))
    add("optimizer", _optimizer(training))
    add("learning rate", training.get("learning_rate"))
    add("schedule", training.get("lr_scheduler_type"))
    add("warm-up steps", training.get("num_warmup_steps"))
    add("weight decay", training.get("weight_decay"))
    add("gradient clipping (max norm)", training.get("max_grad_norm"))
    precision = metrics.get("mixed_precision") or training.get("mixed_precision")
    add("precision", "fp32" if precision in ("no", "fp32") else precision)
    add("gradient estimator (training)", metrics.get("grad_estimator"))
    add("unrolled (backprop) warm-up steps", metrics.get("unrolled_warmup_steps") or None)
    add("seed", training.get("seed"))
    add("hardware", training.get("hardware"))
    add("wall time (training)", duration(metrics.get("train_runtime")))
    forward, backward = (
        number(metrics.get("forward_time_per_step")),
        number(metrics.get("backward_time_per_step")),
    )
    if forward is not None and backward is not None:
        add("time per step (forward / backward)", f"{forward * 1e3:.1f} ms / {backward * 1e3:.1f} ms")
    peak = number(metrics.get("peak_memory_mb"))
    add("peak memory", f"{peak:,.0f} MB" if peak else None)
    add("final training loss", number(metrics.get("train_loss")))
    add("non-finite steps skipped", metrics.get("skipped_nonfinite_steps"))
    return rows


# -- architecture, solver, estimator ----------------------------------------------------------------------------

DEQ_FIELDS = (
    "solver", "solver_kwargs", "solver_max_iter", "solver_eval_max_iter", "solver_tol", "solver_stop_mode",
    "solver_on_failure", "grad_estimator", "grad_steps", "grad_damping", "grad_solver", "grad_max_iter", "grad_tol",
    "jacobian_reg_weight", "compile_cell", "compile_solve",
)  # fmt: skip
_CONFIG_NOISE = {
    "architectures", "auto_map", "model_type", "transformers_version", "dtype", "torch_dtype", "id2label", "label2id",
    "return_dict", "output_hidden_states", "output_attentions", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "tie_encoder_decoder", "_name_or_path", "use_cache", "pad_token_id", "bos_token_id",
    "eos_token_id", "initializer_range", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "finetuning_task", "cross_attention_hidden_size", "add_cross_attention",
}  # fmt: skip
ESTIMATOR_TEXT = {
    "upg": "unrolling-based phantom gradient (UPG): after the no-grad solve, k damped steps "
    "h <- lambda F(h) + (1 - lambda) h are unrolled under autograd from the fixed point",
    "npg": "Neumann-series phantom gradient (NPG): the backward pass sums k terms of the damped Neumann series "
    "of (I - J)^-1, memory O(1) in k",
    "one_step": "one-step (Jacobian-free) gradient: UPG with k=1, lambda=1",
    "implicit": "exact implicit differentiation: the backward pass solves u = J^T u + g with a linear solver",
    "unrolled": "plain backpropagation through k explicit iterations from the initial state",
}
ESTIMATOR_FIELDS = {
    "upg": ("grad_steps", "grad_damping"),
    "npg": ("grad_steps", "grad_damping"),
    "one_step": (),
    "implicit": ("grad_solver", "grad_max_iter", "grad_tol"),
    "unrolled": ("grad_steps",),
}
_ESTIMATOR_LABELS = {
    "grad_steps": "k (steps)",
    "grad_damping": "lambda (damping)",
    "grad_solver": "backward solver",
    "grad_max_iter": "backward max iterations",
    "grad_tol": "backward tolerance",
}


def estimator_name(config) -> str:
    return str(config.grad_estimator).lower().replace("-", "_")


def architecture_rows(config) -> list[tuple[str, str]]:
    rows = []
    for key, value in config.to_dict().items():
        if key in DEQ_FIELDS or key in _CONFIG_NOISE or key.startswith("_"):
            continue
        if isinstance(value, dict) and len(value) > 8:
            continue
        rows.append((key, fmt(value)))
    return rows


def solver_rows(config) -> list[tuple[str, str]]:
    eval_iter = (
        config.solver_eval_max_iter if config.solver_eval_max_iter is not None else config.solver_max_iter
    )
    stop = "relative ‖f(z) − z‖ / ‖f(z)‖" if config.solver_stop_mode == "rel" else "absolute ‖f(z) − z‖"
    return [
        ("forward solver", config.solver),
        ("solver hyperparameters", fmt(config.solver_kwargs or {})),
        ("max iterations (training / evaluation)", f"{config.solver_max_iter} / {eval_iter}"),
        ("tolerance", f"{fmt(config.solver_tol)} ({stop})"),
        ("on non-convergence", config.solver_on_failure),
    ]


def estimator_rows(config) -> list[tuple[str, str]]:
    name = estimator_name(config)
    text = ESTIMATOR_TEXT.get(name, "a registered estimator")
    rows = [("gradient estimator", f"`{config.grad_estimator}`: {text}")]
    for key in ESTIMATOR_FIELDS.get(name, tuple(_ESTIMATOR_LABELS)):
        rows.append((_ESTIMATOR_LABELS[key], fmt(getattr(config, key))))
    if config.jacobian_reg_weight:
        rows.append(("Jacobian regularisation weight", fmt(config.jacobian_reg_weight)))
    return rows


def source_install_command() -> str:
    """How to install hf_deq, which is not on the Python package index: ``pip install "git+<url>"`` when the
    source URL is known (``HF_DEQ_SOURCE_URL``, else the installed package's ``Source``/``Repository`` project
    URL), else from a checkout of the source."""
    url = os.environ.get("HF_DEQ_SOURCE_URL")
    if not url:
        from importlib import metadata

        try:
            entries = metadata.metadata("hf_deq").get_all("Project-URL") or []
        except metadata.PackageNotFoundError:
            entries = []
        urls = dict(entry.split(", ", 1) for entry in entries if ", " in entry)
        url = next((urls[k] for k in ("Source", "Repository", "source", "repository") if k in urls), None)
    if url:
        return f'`pip install "git+{url}"`'
    return "`pip install .` in a checkout of the hf_deq repository"
