"""Causal language modelling with a DEQ-Transformer: a Hub text dataset, local text files or the built-in
corpus; a tokenizer trained on the training text (or a saved one); blocks of ``--block_size`` tokens;
perplexity."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data.errors import InputError
from ..data.text import check_text_file, load_text_datasets, text_dataset_name, tokenize_into_blocks
from ..data.tokenizers import (
    TOKENIZER_KINDS,
    load_saved_tokenizer,
    missing_tokenizer_folder,
    train_tokenizer,
)
from ..training.arguments import config_overrides
from ..training.errors import FlagError
from ..training.flag_ranges import WORKER_RANGE, Range, count_range
from ..training.flags import flag
from ..training.task import TaskData, TrainingTask, register_task

if TYPE_CHECKING:
    from ..training.arguments import TrainingArgs

#: where a checkpoint keeps the run's processing class (the loop writes it there)
CHECKPOINT_PROCESSOR_DIR = "processing_class"
#: the longest ``--block_size``: a longer sequence means over 2**40 attention scores per head and solver iteration
MAX_BLOCK_SIZE = 2**20


def load_text(args: TrainingArgs):
    """The raw ``train`` / ``validation`` text of the data flags."""
    return load_text_datasets(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_file=args.train_file,
        validation_file=args.validation_file,
        text_column_name=args.text_column_name,
        validation_split_percentage=args.validation_split_percentage,
    )


def load_or_train_tokenizer(args: TrainingArgs, raw, checkpoint: Path | None = None):
    """``--tokenizer_name``; or the tokenizer saved with the checkpoint being resumed / the model; or one of
    ``--train_tokenizer`` (default ``char``) trained on the training text."""
    from transformers import AutoTokenizer

    if args.tokenizer_name is not None:
        return load_saved_tokenizer(args.tokenizer_name)
    saved = checkpoint / CHECKPOINT_PROCESSOR_DIR if checkpoint else None
    for candidate in (saved, args.model_name_or_path):
        if candidate is not None and (Path(candidate) / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(candidate)
    kind = args.train_tokenizer or "char"
    return train_tokenizer(kind, raw["train"][args.text_column_name], vocab_size=args.tokenizer_vocab_size)


def build_language_model(args: TrainingArgs, tokenizer):
    """The DEQ-Transformer LM (from ``--preset`` or ``--model_name_or_path``, every config override applied),
    sized to ``tokenizer`` and ``--block_size``."""
    from transformers import AutoModelForCausalLM

    import hf_deq

    overrides = config_overrides(args)
    if args.model_name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **overrides)
        if model.config.vocab_size < len(tokenizer):
            flag, value = (
                ("tokenizer_name", args.tokenizer_name)
                if args.tokenizer_name is not None
                else ("model_name_or_path", args.model_name_or_path)
            )
            raise InputError(
                flag,
                value,
                f"the tokenizer has {len(tokenizer)} tokens but the model in {args.model_name_or_path} only "
                f"{model.config.vocab_size}",
            )
    else:
        fields = {**overrides, "vocab_size": len(tokenizer)}
        base = hf_deq.create_config(args.preset)
        fields.setdefault("max_position_embeddings", max(base.max_position_embeddings, args.block_size))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            fields.setdefault(name, getattr(tokenizer, name))
        cutoffs = fields.get("adaptive_cutoffs", base.adaptive_cutoffs)
        if cutoffs and len(tokenizer) <= max(cutoffs):
            raise InputError(
                "preset",
                args.preset,
                f"--preset {args.preset} uses adaptive embeddings with adaptive_cutoffs={cutoffs} (made for a "
                f"vocabulary of {base.vocab_size:,} tokens), but the tokenizer has {len(tokenizer):,}. Pass cutoffs "
                "that fit, e.g. --config_overrides '{\"adaptive_cutoffs\": [1000, 4000]}', or a plain embedding "
                "with --config_overrides '{\"adaptive_cutoffs\": null}'.",
            )
        model = hf_deq.create_model(args.preset, **fields)
    if args.block_size > model.config.max_position_embeddings:
        raise InputError(
            "block_size",
            args.block_size,
            f"{args.block_size} exceeds the model's max_position_embeddings {model.config.max_position_embeddings}",
        )
    if "trained_context_length" not in overrides:  # the model crops its context past the trained one
        model.config.trained_context_length = args.block_size
    return model


def _unwrap(model):
    while hasattr(model, "module"):  # DDP and similar wrappers
        model = model.module
    return model


def per_example_nll(model, batch: dict, outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed next-token NLL, number of predicted tokens)`` of each sequence. From the logits when the model
    returns them; an adaptive-softmax model returns ``logits=None`` given labels, so its head's exact ``nll``
    is applied to the last hidden state (``hidden_states[-1]``, what the head reads)."""
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    if outputs.logits is not None:
        logits = outputs.logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    else:
        hidden = outputs.hidden_states[-1][:, :-1]
        head = _unwrap(model).get_output_embeddings()
        nll = head.nll(hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)).view(labels.shape)
    nll = torch.where(mask, nll.float(), torch.zeros_like(nll, dtype=torch.float32))
    return nll.sum(dim=1), mask.sum(dim=1).float()


@dataclasses.dataclass
class TextDataArguments:
    """The text data and tokenizer flags of ``scripts/train_deq_lm.py``."""

    _argument_group_name = "text data and tokenizer"

    train_file: str | None = flag(None, "a local text file (one example per line)")
    validation_file: str | None = flag(None, "a local text file")
    text_column_name: str = flag("text", "the dataset's text column")
    validation_split_percentage: float = flag(
        10.0,
        "without a validation split or file, the last this-many percent of the training text (by characters, in "
        "order) are the validation set",
        range=Range(0, 100, low_open=True, high_open=True),
    )
    block_size: int = flag(
        128,
        "tokens per training sequence",
        range=Range(
            2, MAX_BLOCK_SIZE, integer=True, text=f"an integer at least 2 and at most {MAX_BLOCK_SIZE}"
        ),
    )
    preprocessing_num_workers: int | None = flag(None, "processes of the tokenising map", range=WORKER_RANGE)
    tokenizer_name: str | None = flag(None, "a saved tokenizer (path or Hub id)")
    train_tokenizer: str | None = flag(None, "train one on the training text", choices=list(TOKENIZER_KINDS))
    tokenizer_vocab_size: int | None = flag(
        None,
        "vocabulary of a trained tokenizer: bpe (default 8000) or word (default: every training word)",
        range=count_range(2),
    )


@register_task
class CausalLMTask(TrainingTask):
    """The ``causal-lm`` task of ``scripts/train_deq_lm.py``: a DEQ-Transformer language model on text (see the
    module docstring), evaluated by perplexity."""

    name = "causal-lm"
    model_type = "deq_transformer"
    project_name = "train_deq_lm"
    metric_name = "perplexity"
    default_preset = "deq-transformer-char"
    dataset_help = "a datasets Hub id, e.g. Salesforce/wikitext (default: the built-in corpus, no download)"
    defaults = {
        "learning_rate": 1e-3,
        "adam_beta2": 0.99,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "cosine_with_min_lr",
        "num_train_epochs": 1,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "logging_steps": 50,
    }
    forward_kwargs = {"use_cache": False}
    data_source_flags = ("train_file", "validation_file")
    evaluation_data_flags = ("text_column_name", "validation_split_percentage", "block_size")

    arguments = TextDataArguments

    def check_args(self, args: Any) -> dict[str, Any]:
        """The data and tokenizer flags of ``args`` that need no data (``FlagError`` / ``InputError``)."""
        if args.dataset_name is None and args.train_file is None and args.validation_file is not None:
            raise FlagError("validation_file", args.validation_file, "needs --train_file")
        if args.dataset_name is not None and args.train_file is not None:
            raise FlagError("train_file", args.train_file, "pass --dataset_name or --train_file, not both")
        if args.tokenizer_name is not None and args.train_tokenizer is not None:
            raise FlagError(
                "train_tokenizer",
                args.train_tokenizer,
                "pass --tokenizer_name or --train_tokenizer, not both",
            )
        if args.tokenizer_name is not None:
            from ..hub.model_dir import names_a_local_folder

            if names_a_local_folder(args.tokenizer_name) and (
                problem := missing_tokenizer_folder(args.tokenizer_name)
            ):
                raise FlagError("tokenizer_name", args.tokenizer_name, problem)
        for flag_name, path in (("train_file", args.train_file), ("validation_file", args.validation_file)):
            if path is not None:
                check_text_file(path, flag_name, contents=False)  # the contents when loading
        return {}

    def load_raw(self, args: TrainingArgs) -> Any:
        return load_text(args)

    def build_model(self, args: TrainingArgs, raw: Any, checkpoint: Path | None):
        tokenizer = load_or_train_tokenizer(args, raw, checkpoint)
        return build_language_model(args, tokenizer), tokenizer

    def load_pretrained(self, args: TrainingArgs, raw: Any):
        from transformers import AutoModelForCausalLM

        if args.tokenizer_name is not None:
            tokenizer = load_saved_tokenizer(args.tokenizer_name, "tokenizer_name")
        else:
            tokenizer = load_saved_tokenizer(args.model_name_or_path, "model_name_or_path")
        return AutoModelForCausalLM.from_pretrained(args.model_name_or_path), tokenizer

    def load_data(self, args: TrainingArgs, raw: Any, processing_class: Any) -> TaskData:
        from transformers import default_data_collator

        train, validation = tokenize_into_blocks(
            raw,
            processing_class,
            args.block_size,
            args.text_column_name,
            args.preprocessing_num_workers,
            args.max_train_samples,
            args.max_eval_samples,
        )
        return TaskData(
            train=train,
            validation=validation,
            collate_fn=default_data_collator,
            dataset_name=text_dataset_name(args.dataset_name, args.train_file),
            dataset_config_name=args.dataset_config_name,
        )

    def batch_items(self, batch: dict) -> int:
        """The tokens of a training batch."""
        return int(batch["input_ids"].numel())

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(**batch, use_cache=False, output_hidden_states=True)
        loss_sum, num_items = per_example_nll(model, batch, outputs)
        return {
            "loss_sum": loss_sum,
            "num_items": num_items,
            "solver_nstep": outputs.solver_nstep.float(),
            "solver_residual": outputs.solver_residual.float(),
        }

    def compute_metrics(self, values: dict[str, torch.Tensor], eval_loss: float) -> dict[str, float]:
        try:
            return {"perplexity": math.exp(eval_loss)}
        except OverflowError:
            return {"perplexity": math.inf}


__all__ = ["CausalLMTask", "build_language_model", "load_or_train_tokenizer", "load_text", "per_example_nll"]
