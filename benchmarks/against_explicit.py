"""A DEQ against the explicit model a user would pick instead, trained by the same loop on the same data
(``scripts/benchmark_training.py``).

The explicit models enter ``hf_deq.training.train`` through two small tasks that reuse the DEQ tasks' data,
tokenizer / image processor, batches and metric, and only swap the model: ``ExplicitCausalLMTask`` (a
``GPT2LMHeadModel``) and ``ExplicitImageClassificationTask`` (a ResNet-style CNN). Their evaluation returns no
solver statistics (the loop reports NaN for them). ``time_to_target`` reads a run's evaluation history: when did
the DEQ first reach the explicit model's final loss or accuracy."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_deq.tasks.causal_lm import CausalLMTask, per_example_nll
from hf_deq.tasks.image_classification import ImageClassificationTask
from hf_deq.training import parse_args, train
from hf_deq.training.task import TrainingTask

from .explicit_models import ExplicitCNNConfig, ExplicitCNNForImageClassification, explicit_gpt2
from .tables import table


class ExplicitCausalLMTask(CausalLMTask):
    """The causal-LM task with an explicit ``GPT2LMHeadModel`` (``explicit_models.explicit_gpt2``) in place of the
    DEQ-Transformer: same text, tokenizer, blocks and per-token loss."""

    name = "explicit-causal-lm"
    label = "GPT2LMHeadModel (4 layers, width 128, 4 heads)"

    def build_model(self, args: argparse.Namespace, raw: Any, checkpoint: Path | None):
        from hf_deq.tasks.causal_lm import load_or_train_tokenizer

        tokenizer = load_or_train_tokenizer(args, raw, checkpoint)
        return explicit_gpt2(tokenizer, args.block_size), tokenizer

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(**batch, use_cache=False)
        loss_sum, num_items = per_example_nll(model, batch, outputs)
        return {"loss_sum": loss_sum, "num_items": num_items}


class ExplicitImageClassificationTask(ImageClassificationTask):
    """The image-classification task with ``ExplicitCNNForImageClassification`` in place of the MDEQ: same
    images, image processor (that of ``--preset``), augmentation and accuracy."""

    name = "explicit-image-classification"
    label = "ResNet-style CNN (widths 32, 64; 2 blocks each)"

    def build_model(self, args: argparse.Namespace, raw: Any, checkpoint: Path | None):
        from hf_deq.models.mdeq import MDEQImageProcessor
        from hf_deq.variants import create_config

        label_names = raw.label_names
        deq_config = create_config(args.preset)
        config = ExplicitCNNConfig(
            num_channels=deq_config.num_channels,
            image_size=deq_config.image_size,
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
        return ExplicitCNNForImageClassification(config), MDEQImageProcessor.from_model_config(deq_config)

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(**batch)
        loss = F.cross_entropy(outputs.logits.float(), batch["labels"], reduction="none")
        return {
            "loss_sum": loss,
            "num_items": torch.ones_like(loss),
            "predictions": outputs.logits.argmax(dim=-1),
            "references": batch["labels"],
        }


def time_to_target(
    history: Sequence[dict[str, Any]],
    key: str,
    target: float,
    higher_is_better: bool,
    clock: str = "train_time",
    eps: float = 0.0,
) -> dict[str, Any] | None:
    """When a run's evaluations first reached ``target`` (``history`` as ``train`` returns it: ``step``, the
    clocks ``train_time`` (wall) and ``train_cpu_time``, and ``eval_*`` per evaluation), on ``clock``:
    ``first_eval_s`` / ``first_eval_step`` of the first evaluation at or beyond the target (an upper bound), and
    ``interpolated_s``, linear in time between it and the evaluation before (the first evaluation's own time when
    there is none before it). None when never reached. ``eps``: a value within ``eps`` of the target counts as
    reaching it."""
    previous = None
    for entry in history:
        value = entry.get(key)
        if value is None or not math.isfinite(value):
            previous = None
            continue
        reached = value >= target - eps if higher_is_better else value <= target + eps
        if reached:
            time_s = entry[clock]
            if previous is not None and previous[1] != value:
                t0, v0 = previous
                time_s = t0 + (entry[clock] - t0) * (v0 - target) / (v0 - value)
            step = entry.get("step")
            return {"first_eval_s": entry[clock], "first_eval_step": step, "interpolated_s": time_s}
        previous = (entry[clock], value)
    return None


#: the clocks of a comparison: history key and results key of each
CLOCKS = {"wall": ("train_time", "train_runtime"), "cpu": ("train_cpu_time", "train_cpu_runtime")}


@dataclass(frozen=True)
class Family:
    """One comparison: the DEQ task (whose flags both runs parse), the explicit task, the metric the DEQ must
    reach (``eval_<metric>`` of the explicit run's end) and the training script whose flags the runs take."""

    name: str
    deq_task: TrainingTask
    explicit_task: TrainingTask
    metric: str
    higher_is_better: bool
    script: str


FAMILIES: dict[str, Family] = {
    "lm": Family("lm", CausalLMTask(), ExplicitCausalLMTask(), "loss", False, "train_deq_lm.py"),
    "mdeq": Family(
        "mdeq",
        ImageClassificationTask(),
        ExplicitImageClassificationTask(),
        "accuracy",
        True,
        "train_mdeq_classifier.py",
    ),
}

#: the explicit GPT's recipe (batch 12, AdamW 1e-3 cosine to 1e-4, 100 warm-up steps); add the text flags
EXPLICIT_LM_FLAGS = [
    "--train_tokenizer", "char", "--block_size", "64",
    "--per_device_train_batch_size", "12", "--per_device_eval_batch_size", "64",
    "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine_with_min_lr", "--min_lr_ratio", "0.1",
    "--num_warmup_steps", "100", "--max_train_steps", "2000", "--logging_steps", "100", "--seed", "0",
]  # fmt: skip

#: the LM target of the project: the DEQ reaches the explicit model's final loss within this share of its
#: wall time, with at most this share of its parameters
LM_TARGET_TIME_RATIO, LM_TARGET_PARAMETER_RATIO = 1.0, 1 / 3


def parse_run(family: Family, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed and checked as ``family``'s training script does (the explicit run parses the same
    flags: its task only swaps the model)."""
    return parse_args(family.deq_task, argv, script=family.script)


def compare(
    family: Family,
    deq_argv: list[str],
    explicit_argv: list[str],
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the explicit model, then the DEQ, in this process (same threads, same machine); return both runs'
    results and the DEQ's time to the explicit model's final ``eval_<metric>``."""
    runs: dict[str, dict[str, Any]] = {}
    for kind, task, argv in (
        ("explicit", family.explicit_task, explicit_argv),
        ("deq", family.deq_task, deq_argv),
    ):
        echo(f"=== {family.name}: {kind} ===")
        args = parse_run(family, argv)
        runs[kind] = train(task, args)
        runs[kind]["model_label"] = (
            getattr(task, "label", None) or f"{args.preset}, {runs[kind]['grad_estimator']}"
        )
    key = f"eval_{family.metric}"
    target = runs["explicit"][key]
    reached, ratio, first_ratio = {}, {}, {}
    for name, (clock, total) in CLOCKS.items():
        reached[name] = time_to_target(runs["deq"]["history"], key, target, family.higher_is_better, clock)
        explicit_time = runs["explicit"][total]
        ratio[name] = None if reached[name] is None else reached[name]["interpolated_s"] / explicit_time
        first_ratio[name] = None if reached[name] is None else reached[name]["first_eval_s"] / explicit_time
    return {
        "metric": key,
        "task_metric": f"eval_{family.deq_task.metric_name}",
        "target": target,
        "higher_is_better": family.higher_is_better,
        "deq_time_to_target": reached,
        "deq_time_to_target_ratio": ratio,
        "deq_first_eval_ratio": first_ratio,
        "parameter_ratio": runs["deq"]["num_parameters"] / runs["explicit"]["num_parameters"],
        "runs": runs,
    }


def lm_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The LM target's checks on a ``compare`` result of the ``lm`` family: on wall time, as the target is
    stated, and on CPU time, which load from other jobs on a shared machine disturbs less."""
    params = result["parameter_ratio"]
    rows = []
    for clock, what in (("wall", "wall time"), ("cpu", "CPU time")):
        ratio = result["deq_time_to_target_ratio"][clock]
        met = (
            ratio is not None
            and ratio <= LM_TARGET_TIME_RATIO
            and params <= LM_TARGET_PARAMETER_RATIO + 1e-12
        )
        reached = "never reached" if ratio is None else f"{ratio:.2f}x"
        rows.append(
            {
                "clock": clock,
                "target": f"DEQ reaches the explicit GPT's final eval loss in <= {LM_TARGET_TIME_RATIO:.1f}x its "
                f"{what} with <= 1/3 of its parameters",
                "measured": f"{reached} of its {what}, {params:.2f}x the parameters",
                "met": met,
            }
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _reached(result: dict[str, Any], clock: str) -> str:
    reached = result["deq_time_to_target"][clock]
    if reached is None:
        return "not reached"
    return (
        f"{reached['interpolated_s']:.1f} s ({result['deq_time_to_target_ratio'][clock]:.2f}x); first eval there: "
        f"step {reached['first_eval_step']}, {reached['first_eval_s']:.1f} s ({result['deq_first_eval_ratio'][clock]:.2f}x)"
    )


def comparison_lines(name: str, result: dict[str, Any]) -> list[str]:
    """A markdown table of one ``compare`` result."""
    key, shown, runs = result["metric"], result["task_metric"], result["runs"]
    headers = ["model", "parameters", "eval loss", shown, "train wall s", "train CPU s"]
    headers += [f"time to explicit's final {key}: wall", "CPU"]
    rows = []
    for kind in ("explicit", "deq"):
        run = runs[kind]
        to_target = ["(reference)"] * 2 if kind == "explicit" else [_reached(result, c) for c in CLOCKS]
        rows.append(
            [
                f"{kind}: {run['model_label']}",
                f"{run['num_parameters']:,}",
                _fmt(run["eval_loss"], ".4f"),
                _fmt(run[shown], ".4f"),
                _fmt(run["train_runtime"], ".1f"),
                _fmt(run["train_cpu_runtime"], ".1f"),
                *to_target,
            ]
        )
    return [
        f"### {name}: DEQ against the explicit model (target {key} = {result['target']:.4f})",
        "",
        table(headers, rows),
        "",
        f"- parameters, DEQ / explicit: {result['parameter_ratio']:.2f}x. Times are training only (evaluation and "
        "start-up excluded); ratios are to the explicit model's time on the same clock. CPU time "
        "(time.process_time) is what load from other jobs on a shared machine disturbs least.",
    ]


def json_ready(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


__all__ = [
    "CLOCKS",
    "EXPLICIT_LM_FLAGS",
    "FAMILIES",
    "LM_TARGET_PARAMETER_RATIO",
    "LM_TARGET_TIME_RATIO",
    "ExplicitCausalLMTask",
    "ExplicitImageClassificationTask",
    "Family",
    "compare",
    "comparison_lines",
    "json_ready",
    "lm_targets",
    "parse_run",
    "time_to_target",
]
