"""The pieces of a model card, each from the config, the run's ``all_results.json`` (one fixed set of keys, written
by both training scripts) or the training recipe (the script's flags): the dataset, the evaluation results, the
recipe table, the architecture, solver and estimator tables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..deq.registry import normalize_name
from ..deq_fields import DEQ_FIELD_NAMES, DEQField, deq_field, estimator_fields, field_names
from .card_text import Markup, code_span, escape_card_text, markdown
from .model_dir import names_a_local_folder
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


def _names_local_data(name: str) -> bool:
    """Whether ``name`` is a local file or folder rather than a Hub id: path syntax, a data-file suffix, not a
    valid Hub id, or a file or folder on this machine."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).suffix.lower() in DATA_FILE_BUILDERS
        or not _HUB_ID.fullmatch(name)
        or os.path.exists(os.path.expanduser(name))
    )


def _source_kind(name: str, training: Mapping[str, Any]) -> str:
    """``"local"``, ``"hub"`` or ``"unknown"``: where the data named ``name`` came from. The run's recipe decides
    when it is known (a local data flag, or its ``--dataset_name``: the training record makes a local one
    absolute); without it a ``namespace/name`` is a Hub id, and a bare name is ``unknown`` (``all_results.json``
    keeps only a local folder's base name, which looks like a canonical Hub id)."""
    if any(training.get(flag) for flag in LOCAL_DATA_FLAGS) and not training.get("dataset_name"):
        return "local"
    recorded = training.get("dataset_name")
    if recorded and _names_local_data(str(recorded)):
        return "local"
    if not recorded and _names_local_data(name):
        return "local"
    if _HUB_ID.fullmatch(name) and (recorded or "/" in name):
        return "hub"
    return "unknown"


def dataset_info(facts: CardFacts, metrics: Mapping[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    """What the run trained on, from ``dataset_name`` / ``dataset_config_name`` in ``all_results.json`` (else in
    the recipe, else the recipe's local data flag): ``kind`` is ``"hub"`` (a Hub dataset id: linked, and listed
    in the card's ``datasets:`` metadata), ``"builtin"`` (a name the family's script loads itself, e.g.
    ``digits``), ``"local"`` (a local file or folder: only its name is shown), ``"unknown"`` (a bare name the run
    did not say the source of: shown, not linked) or ``None`` (not recorded).
    ``id`` is set for Hub datasets only; ``type`` / ``name`` / ``config`` / ``split`` are the model-index
    dataset fields (``type`` of a non-Hub dataset is the ``datasets`` builder, or ``custom``); ``label`` is the
    short name and ``text`` the sentence the card shows (``Markup``: its user-supplied parts escaped)."""
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
        "config": escape_card_text(config_name, markdown=False) if config_name else None,
        "split": "validation",
        "num_examples": metrics.get("eval_num_examples"),
    }
    if not name:
        info["config"] = None
        return info
    name = escape_card_text(name, markdown=False)
    kind = "builtin" if name in facts.builtin_datasets else _source_kind(name, training)
    if kind == "builtin":
        description = facts.builtin_datasets[name]
        info.update(kind="builtin", name=f"{name}: {description}", label=name, config=None)
        info["text"] = markdown(
            "{}, {}, loaded by the training script itself (not a Hub dataset)", code_span(name), description
        )
    elif kind == "local":
        file_name = Path(name.rstrip("/\\")).name or name  # never a local absolute path in a public card
        info.update(kind="local", name=file_name, label=file_name, config=None)
        info["type"] = DATA_FILE_BUILDERS.get(Path(file_name).suffix.lower(), "custom")
        info["text"] = markdown("local data, {} (not a Hub dataset)", code_span(file_name))
    elif kind == "unknown":
        info.update(kind="unknown", name=name, label=name)
        info["text"] = markdown(
            "{} (the run did not record whether it is a Hub dataset or a local folder)", code_span(name)
        )
    else:  # a valid Hub id (``_HUB_ID``): safe in the link's address
        info.update(kind="hub", id=name, type=name, name=name, label=name)
        config = markdown(" (configuration {})", code_span(info["config"])) if info["config"] else ""
        url = Markup(f"https://huggingface.co/datasets/{name}")
        info["text"] = markdown("[{}]({}){} from the Hugging Face Hub", name, url, config)
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
    start = training.get("model_name_or_path")
    if start and names_a_local_folder(str(start)):  # never a local path in a public card
        start = f"{Path(str(start).rstrip('/')).name} (a local model folder)"
    add("started from", start)
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
    logging_steps = training.get("logging_steps")
    window = f"last logging window of {fmt(logging_steps)} steps" if logging_steps else "last logging window"
    add(f"final training loss ({window})", number(metrics.get("train_loss_last_window")))
    add("mean training loss (whole run)", number(metrics.get("train_loss")))
    add("non-finite steps skipped", metrics.get("skipped_nonfinite_steps"))
    return rows


# -- architecture, solver, estimator ----------------------------------------------------------------------------

_CONFIG_NOISE = {
    "architectures", "auto_map", "model_type", "transformers_version", "dtype", "torch_dtype", "id2label", "label2id",
    "return_dict", "output_hidden_states", "output_attentions", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "tie_encoder_decoder", "_name_or_path", "use_cache", "pad_token_id", "bos_token_id",
    "eos_token_id", "initializer_range", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "finetuning_task", "cross_attention_hidden_size", "add_cross_attention",
}  # fmt: skip


def estimator_name(config) -> str:
    return normalize_name(str(config.grad_estimator))


def architecture_rows(config) -> list[tuple[str, str]]:
    """The config's fields but the DEQ fields (``DEQ_FIELD_NAMES``) and transformers' bookkeeping."""
    rows = []
    for key, value in config.to_dict().items():
        if key in DEQ_FIELD_NAMES or key in _CONFIG_NOISE or key.startswith("_"):
            continue
        if isinstance(value, dict) and len(value) > 8:
            continue
        rows.append((key, fmt(value)))
    return rows


def _named_entry(field: DEQField, name: Any) -> Markup:
    """A registry name with the registered class's label and description (``not registered here`` when the
    environment rendering the card lacks it)."""
    registry = field.registry
    try:
        label, text = registry.label(name), registry.description(name)
    except ValueError:
        return markdown("{} (a {} not registered here)", code_span(str(name)), registry.kind)
    if normalize_name(label) == normalize_name(str(name)):
        return markdown("{}: {}", code_span(name), text)
    return markdown("{} ({}): {}", code_span(name), label, text)


def _field_row(field: DEQField, config) -> tuple[str, Any]:
    """A field's card row: its ``label`` and its value (a ``None`` resolved through its ``fallback``)."""
    value = getattr(config, field.name)
    if value is None and field.fallback:
        value = getattr(config, field.fallback)
    if field.registry is not None:
        return field.label, _named_entry(field, value)
    return field.label, fmt({} if value is None and field.type is dict else value)


def solver_rows(config) -> list[tuple[str, Any]]:
    """One row per field of the ``"solver"`` group of the field table."""
    return [_field_row(deq_field(name), config) for name in field_names("solver")]


def estimator_rows(config) -> list[tuple[str, Any]]:
    """The estimator (with its registry description), the fields it reads (every hyperparameter field when it
    is not registered here), and the regularisation fields that are on."""
    rows = [_field_row(deq_field("grad_estimator"), config)]
    try:
        read = estimator_fields(estimator_name(config))
    except ValueError:
        read = field_names("gradient")[1:]
    rows += [_field_row(deq_field(name), config) for name in read]
    on = [name for name in field_names("regularization") if getattr(config, name)]
    return rows + [_field_row(deq_field(name), config) for name in on]


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
        return code_span(f'pip install "git+{url}"')
    return markdown("{} in a checkout of the hf_deq repository", code_span("pip install ."))
