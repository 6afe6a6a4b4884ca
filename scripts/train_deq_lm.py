"""Train a DEQ-Transformer causal language model with Accelerate (shape of the ``accelerate`` examples:
``get_dataloaders`` -> ``training_function`` -> ``main``).

    # built-in corpus (Python's pydoc topics, no download), char tokenizer, the CPU demo preset
    python scripts/train_deq_lm.py --output_dir /tmp/deq-lm --max_train_steps 200

    # character-level tinyshakespeare: first 90% train, last 10% validation
    python scripts/train_deq_lm.py --train_file input.txt --train_tokenizer char --preset deq-transformer-char \\
        --block_size 64 --per_device_train_batch_size 16 --max_train_steps 2000 --output_dir /tmp/shakespeare

    # WikiText-103 at the paper's scale (word tokenizer, adaptive embeddings; the recipe is a JSON of flags)
    accelerate launch scripts/train_deq_lm.py --config scripts/configs/deq-transformer-wt103-upg.json \\
        --with_tracking --output_dir runs/wt103

    # a smaller WikiText-103 model with a BPE tokenizer
    accelerate launch scripts/train_deq_lm.py --dataset_name Salesforce/wikitext \\
        --dataset_config_name wikitext-103-v1 --train_tokenizer bpe --preset deq-transformer-small \\
        --block_size 256 --mixed_precision bf16 --with_tracking --output_dir runs/wt103-small

Every solver and gradient-estimator field of the config is a flag (``--grad_estimator implicit``,
``--solver broyden``, ...). ``--unrolled_warmup_steps N`` trains the first N steps with the ``unrolled``
estimator (plain backprop through ``grad_steps`` explicit iterations), then switches to the configured one.
Checkpoints (``--checkpointing_steps``) hold the model, optimizer, scheduler and RNG states;
``--resume_from_checkpoint {path,latest}`` continues exactly where the run stopped. At the end the model and the
tokenizer are saved to ``--output_dir`` (``AutoModelForCausalLM`` / ``AutoTokenizer`` reload them) with
``all_results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, get_scheduler

import hf_deq
from hf_deq.hub import add_hub_arguments, check_hub_args, push_from_args
from hf_deq.text_utils import TOKENIZER_KINDS, builtin_corpus, group_texts, tail_split_index, train_tokenizer
from hf_deq.training_utils import (
    EstimatorSchedule,
    NonFiniteStepGuard,
    add_deq_arguments,
    check_output_dir,
    deq_overrides,
    log_step,
    parse_args_with_config_file,
    resolve_checkpoint,
    save_checkpoint_atomically,
    solver_stats,
    state_fingerprint,
)

logger = get_logger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="a datasets hub id, e.g. Salesforce/wikitext")
    data.add_argument("--dataset_config_name", default=None, help="e.g. wikitext-103-v1")
    data.add_argument("--train_file", default=None, help="a local text file (one example per line)")
    data.add_argument("--validation_file", default=None, help="a local text file")
    data.add_argument("--text_column_name", default="text")
    data.add_argument(
        "--validation_split_percentage",
        type=float,
        default=10.0,
        help="without a validation split or file, the last this-many percent of the training text (by "
        "characters, in order) are the validation set",
    )
    data.add_argument("--block_size", type=int, default=128, help="tokens per training sequence")
    data.add_argument("--max_train_samples", type=int, default=None, help="truncate the training blocks")
    data.add_argument("--max_eval_samples", type=int, default=None, help="truncate the validation blocks")
    data.add_argument("--preprocessing_num_workers", type=int, default=None)

    tok = parser.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer_name", default=None, help="a saved tokenizer (path or hub id)")
    tok.add_argument(
        "--train_tokenizer", choices=TOKENIZER_KINDS, default=None, help="train one on the training text"
    )
    tok.add_argument(
        "--tokenizer_vocab_size",
        type=int,
        default=None,
        help="vocabulary of a trained tokenizer: bpe (default 8000) or word (default: every training word)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None, help="start from a saved DEQ-Transformer")
    model.add_argument(
        "--preset", default="deq-transformer-char", help="a preset from hf_deq.list_variants()"
    )
    model.add_argument(
        "--config_overrides",
        type=json.loads,
        default=None,
        help="JSON config fields, e.g. '{\"hidden_size\": 96}'",
    )
    add_deq_arguments(parser)

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--per_device_train_batch_size", type=int, default=16)
    opt.add_argument("--per_device_eval_batch_size", type=int, default=32)
    opt.add_argument("--gradient_accumulation_steps", type=int, default=1)
    opt.add_argument("--learning_rate", type=float, default=1e-3)
    opt.add_argument("--weight_decay", type=float, default=0.0)
    opt.add_argument("--adam_beta1", type=float, default=0.9)
    opt.add_argument("--adam_beta2", type=float, default=0.99)
    opt.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    opt.add_argument(
        "--lr_scheduler_type",
        default="cosine_with_min_lr",
        help="a transformers scheduler name (linear, cosine, cosine_with_min_lr, constant_with_warmup, ...)",
    )
    opt.add_argument("--min_lr_ratio", type=float, default=0.1, help="for cosine_with_min_lr")
    opt.add_argument("--num_warmup_steps", type=int, default=0)
    opt.add_argument("--num_train_epochs", type=int, default=1)
    opt.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    opt.add_argument("--seed", type=int, default=42)
    opt.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    opt.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--overwrite_output_dir", action="store_true")
    run.add_argument("--checkpointing_steps", default=None, help="an integer (every N steps) or 'epoch'")
    run.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    run.add_argument("--logging_steps", type=int, default=50)
    run.add_argument(
        "--log_file",
        default=None,
        help="append one JSON line per optimizer step (step, loss, skipped steps) and a final one with the "
        "weights' SHA-256; process i > 0 writes <log_file>.rank<i>",
    )
    run.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps (and at the end)")
    run.add_argument(
        "--max_nonfinite_steps", type=int, default=10, help="stop after this many bad steps in a row"
    )
    run.add_argument("--with_tracking", action="store_true", help="log to the trackers of --report_to")
    run.add_argument("--report_to", default="all", help="tensorboard, wandb, ... or all")
    add_hub_arguments(parser)
    args = parse_args_with_config_file(parser, argv, Path(__file__).name)
    check_hub_args(args)

    if args.dataset_name is None and args.train_file is None and args.validation_file is not None:
        parser.error("--validation_file needs --train_file")
    if args.dataset_name is not None and args.train_file is not None:
        parser.error("pass --dataset_name or --train_file, not both")
    if args.tokenizer_name is not None and args.train_tokenizer is not None:
        parser.error("pass --tokenizer_name or --train_tokenizer, not both")
    if args.block_size < 2:
        parser.error("--block_size must be at least 2")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1:
            parser.error("--checkpointing_steps must be a positive integer or 'epoch'")
    if not 0 < args.validation_split_percentage < 100:
        parser.error("--validation_split_percentage must be in (0, 100)")
    return args


# -- data -------------------------------------------------------------------------------------------------------
def load_raw_datasets(args: argparse.Namespace):
    """A DatasetDict with ``train`` and ``validation`` text splits."""
    from datasets import Dataset, DatasetDict, load_dataset

    if args.dataset_name is not None:
        raw = load_dataset(args.dataset_name, args.dataset_config_name)
    elif args.train_file is not None:
        files = {"train": args.train_file}
        if args.validation_file is not None:
            files["validation"] = args.validation_file
        raw = load_dataset("text", data_files=files, keep_linebreaks=True)
    else:
        raw = DatasetDict({"train": Dataset.from_dict({"text": builtin_corpus()})})
    if args.text_column_name not in raw["train"].column_names:
        raise SystemExit(
            f"--text_column_name {args.text_column_name!r} is not a column of the dataset "
            f"({raw['train'].column_names})"
        )
    if "validation" not in raw:
        # The tail of the training text (in order), so that validation text follows the training text.
        train = raw["train"]
        lengths = [len(t) for t in train[args.text_column_name]]
        split = tail_split_index(lengths, args.validation_split_percentage / 100)
        raw = DatasetDict(
            {"train": train.select(range(split)), "validation": train.select(range(split, len(train)))}
        )
    return raw


def load_or_train_tokenizer(args: argparse.Namespace, raw, checkpoint: Path | None):
    """``--tokenizer_name``; or the tokenizer saved with a model / checkpoint; or one trained on the text."""
    if args.tokenizer_name is not None:
        return AutoTokenizer.from_pretrained(args.tokenizer_name)
    for candidate in (checkpoint / "tokenizer" if checkpoint else None, args.model_name_or_path):
        if candidate is not None and (Path(candidate) / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(candidate)
    kind = args.train_tokenizer or "char"
    return train_tokenizer(kind, raw["train"][args.text_column_name], vocab_size=args.tokenizer_vocab_size)


def get_dataloaders(accelerator: Accelerator, args: argparse.Namespace, tokenizer, raw):
    """Tokenise, cut into ``block_size`` blocks (labels = inputs, the model shifts them), build the loaders."""
    column = args.text_column_name

    def tokenize(examples):
        return tokenizer(examples[column], add_special_tokens=False, return_attention_mask=False)

    with accelerator.main_process_first():
        tokenized = raw.map(
            tokenize,
            batched=True,
            num_proc=args.preprocessing_num_workers,
            remove_columns=raw["train"].column_names,
            desc="tokenizing",
        )
        blocks = tokenized.map(
            group_texts,
            batched=True,
            batch_size=10000,
            fn_kwargs={"block_size": args.block_size},
            num_proc=args.preprocessing_num_workers,
            desc=f"grouping into blocks of {args.block_size}",
        )
    train, validation = blocks["train"], blocks["validation"]
    if args.max_train_samples is not None:
        train = train.select(range(min(len(train), args.max_train_samples)))
    if args.max_eval_samples is not None:
        validation = validation.select(range(min(len(validation), args.max_eval_samples)))
    if len(train) == 0 or len(validation) == 0:
        raise SystemExit(
            f"not enough text for one block of {args.block_size} tokens in each split "
            f"(train {len(train)} blocks, validation {len(validation)} blocks); lower --block_size"
        )
    train_dataloader = DataLoader(
        train, shuffle=True, collate_fn=default_data_collator, batch_size=args.per_device_train_batch_size
    )
    eval_dataloader = DataLoader(
        validation,
        shuffle=False,
        collate_fn=default_data_collator,
        batch_size=args.per_device_eval_batch_size,
    )
    return train_dataloader, eval_dataloader


# -- model ------------------------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, tokenizer):
    overrides = deq_overrides(args)
    if args.model_name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **overrides)
        if model.config.vocab_size < len(tokenizer):
            raise SystemExit(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}"
            )
    else:
        fields = dict(args.config_overrides or {})
        fields.update(overrides)
        fields["vocab_size"] = len(tokenizer)
        base = hf_deq.create_config(args.preset)
        fields.setdefault("max_position_embeddings", max(base.max_position_embeddings, args.block_size))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            fields.setdefault(name, getattr(tokenizer, name))
        cutoffs = fields.get("adaptive_cutoffs", base.adaptive_cutoffs)
        if cutoffs and len(tokenizer) <= max(cutoffs):
            raise SystemExit(
                f"--preset {args.preset} uses adaptive embeddings with adaptive_cutoffs={cutoffs} (made for a "
                f"vocabulary of {base.vocab_size:,} tokens), but the tokenizer has {len(tokenizer):,}. Pass cutoffs "
                "that fit, e.g. --config_overrides '{\"adaptive_cutoffs\": [1000, 4000]}', or a plain embedding "
                "with --config_overrides '{\"adaptive_cutoffs\": null}'."
            )
        model = hf_deq.create_model(args.preset, **fields)
    if args.block_size > model.config.max_position_embeddings:
        raise SystemExit(
            f"--block_size {args.block_size} exceeds the model's max_position_embeddings "
            f"{model.config.max_position_embeddings}"
        )
    return model


def count_parameters(model) -> int:
    return int(sum({id(p): p.numel() for p in model.parameters() if p.requires_grad}.values()))


def evaluate(model, eval_dataloader, accelerator: Accelerator) -> dict[str, float]:
    """Mean next-token loss over the validation blocks (gathered across processes), its perplexity, and the
    solver statistics."""
    model.eval()
    losses, nsteps, residuals = [], [], []
    for batch in eval_dataloader:
        with torch.no_grad():
            outputs = model(**batch, use_cache=False)
        size = batch["input_ids"].shape[0]
        losses.append(accelerator.gather_for_metrics(outputs.loss.detach().float().repeat(size)))
        nsteps.append(accelerator.gather_for_metrics(outputs.solver_nstep))
        residuals.append(accelerator.gather_for_metrics(outputs.solver_residual.float()))
    model.train()
    loss = float(torch.cat(losses).mean())
    stats = solver_stats(
        SimpleNamespace(solver_nstep=torch.cat(nsteps), solver_residual=torch.cat(residuals))
    )
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = math.inf
    return {
        "eval_loss": loss,
        "perplexity": perplexity,
        **{f"eval_{k}": v for k, v in stats.items()},
        "eval_num_examples": int(torch.cat(losses).numel()),  # gathered: the whole split, each block once
    }


# -- training ---------------------------------------------------------------------------------------------------
def training_function(args: argparse.Namespace) -> dict:
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    tracking = {"log_with": args.report_to, "project_dir": args.output_dir} if args.with_tracking else {}
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        **tracking,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)

    checkpoint = None
    if args.resume_from_checkpoint is not None:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    check_output_dir(args.output_dir, args.overwrite_output_dir, resuming=checkpoint is not None)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    with accelerator.main_process_first():
        raw = load_raw_datasets(args)
    tokenizer = load_or_train_tokenizer(args, raw, checkpoint)
    train_dataloader, eval_dataloader = get_dataloaders(accelerator, args, tokenizer, raw)
    model = build_model(args, tokenizer)
    target_estimator = model.config.grad_estimator
    num_parameters = count_parameters(model)
    logger.info(
        f"{type(model).__name__}: {num_parameters:,} parameters, vocabulary {len(tokenizer)}, "
        f"estimator {target_estimator}, solver {model.config.solver} (max_iter {model.config.solver_max_iter})"
    )

    no_decay = ("bias", "norm", "embed_tokens")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)]},
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    scheduler_kwargs = (
        {"min_lr_rate": args.min_lr_ratio} if args.lr_scheduler_type == "cosine_with_min_lr" else {}
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
        scheduler_specific_kwargs=scheduler_kwargs,
    )
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    unwrapped = accelerator.unwrap_model(model)

    if accelerator.is_main_process:
        tokenizer.save_pretrained(args.output_dir)
    if args.with_tracking:
        hps = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_deq_lm", hps)

    completed_steps, start_epoch, resume_batches = 0, 0, 0
    if checkpoint is not None:
        accelerator.print(f"resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        completed_steps = int(state["completed_steps"])
        start_epoch = completed_steps // steps_per_epoch
        resume_batches = (completed_steps % steps_per_epoch) * args.gradient_accumulation_steps

    def save_checkpoint(name: str, epoch: int) -> None:
        path = save_checkpoint_atomically(
            accelerator, args.output_dir, name, extra={"completed_steps": completed_steps, "epoch": epoch}
        )
        if accelerator.is_main_process:
            tokenizer.save_pretrained(path / "tokenizer")
            push_from_args(args, model=unwrapped, processing_class=tokenizer, step=completed_steps)

    schedule = EstimatorSchedule(unwrapped, args.unrolled_warmup_steps, args.unrolled_warmup_depth)

    guard = NonFiniteStepGuard(args.max_nonfinite_steps, inspect_gradients=accelerator.scaler is None)
    progress = tqdm(
        range(args.max_train_steps), disable=not accelerator.is_local_main_process, initial=completed_steps
    )
    results: dict = {}
    window_loss, window_steps, window_stats = 0.0, 0, []
    total_loss, total_steps = 0.0, 0
    start = time.time()
    model.train()
    for epoch in range(start_epoch, num_epochs):
        train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        if epoch == start_epoch and resume_batches:
            batches = accelerator.skip_first_batches(train_dataloader, resume_batches)
        for batch in batches:
            if schedule.update(completed_steps) and args.unrolled_warmup_steps:
                logger.info(
                    f"step {completed_steps}: gradient estimator -> {unwrapped.config.grad_estimator}"
                )
            # Dropout masks depend on the step only, so a resumed run draws the ones the original run drew.
            torch.manual_seed(
                args.seed + 1_000_003 * (completed_steps + 1) + 7919 * accelerator.process_index
            )
            with accelerator.accumulate(model):
                outputs = model(**batch, use_cache=False)
                loss = outputs.loss
                if not guard.check_loss(accelerator.gather(loss.detach().float().reshape(1))):
                    optimizer.zero_grad()
                    logger.warning(
                        f"step {completed_steps}: non-finite loss, step skipped ({guard.skipped} so far)"
                    )
                    continue
                accelerator.backward(loss)
                if accelerator.sync_gradients and not guard.check_gradients(model.parameters()):
                    optimizer.zero_grad()
                    logger.warning(
                        f"step {completed_steps}: non-finite gradient, step skipped ({guard.skipped} so far)"
                    )
                    continue
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            lm_loss = float(loss.detach())
            if outputs.jacobian_loss is not None:
                lm_loss -= unwrapped.config.jacobian_reg_weight * float(outputs.jacobian_loss.detach())
            window_loss += lm_loss / args.gradient_accumulation_steps
            window_stats.append(solver_stats(outputs))
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            window_steps += 1
            progress.update(1)
            if args.log_file:
                log_step(
                    args.log_file,
                    accelerator,
                    {"step": completed_steps, "loss": lm_loss, "skipped_nonfinite_steps": guard.skipped},
                )
            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
                mean_loss = window_loss / window_steps
                log = {
                    "train_loss": mean_loss,
                    "train_perplexity": math.exp(min(mean_loss, 50.0)),
                    "lr": lr_scheduler.get_last_lr()[0],
                    "epoch": epoch,
                    "elapsed_s": time.time() - start,
                    **{k: sum(s[k] for s in window_stats) / len(window_stats) for k in window_stats[0]},
                }
                if outputs.jacobian_loss is not None:
                    log["jacobian_loss"] = float(outputs.jacobian_loss.detach())
                progress.set_postfix(loss=f"{mean_loss:.3f}", nstep=f"{log['solver_nstep']:.1f}")
                logger.info(f"step {completed_steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in log.items()))
                if args.with_tracking:
                    accelerator.log(log, step=completed_steps)
                total_loss += window_loss
                total_steps += window_steps
                window_loss, window_steps, window_stats = 0.0, 0, []
            if (
                args.checkpointing_steps not in (None, "epoch")
                and completed_steps % int(args.checkpointing_steps) == 0
            ):
                save_checkpoint(f"step_{completed_steps}", epoch)
            if (
                args.eval_steps
                and completed_steps % args.eval_steps == 0
                and completed_steps < args.max_train_steps
            ):
                results = evaluate(model, eval_dataloader, accelerator)
                logger.info(
                    f"step {completed_steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items())
                )
                if args.with_tracking:
                    accelerator.log(results, step=completed_steps)
            if completed_steps >= args.max_train_steps:
                break
        if args.checkpointing_steps == "epoch":
            save_checkpoint(f"epoch_{epoch}", epoch)
        if completed_steps >= args.max_train_steps:
            break
    train_runtime = time.time() - start
    progress.close()

    schedule.finish()  # the saved config names the target estimator
    results = evaluate(model, eval_dataloader, accelerator)
    logger.info("final: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
    if args.with_tracking:
        accelerator.log(results, step=completed_steps)
        accelerator.end_training()
    total_loss += window_loss
    total_steps += window_steps
    results.update(
        {
            "train_loss": total_loss / total_steps if total_steps else math.nan,
            "train_steps": completed_steps,
            "train_runtime_s": train_runtime,
            "skipped_nonfinite_steps": guard.skipped,
            "grad_estimator": target_estimator,
            "unrolled_warmup_steps": args.unrolled_warmup_steps,
            "solver": unwrapped.config.solver,
            "num_parameters": num_parameters,
            "block_size": args.block_size,
            "vocab_size": len(tokenizer),
            "num_processes": accelerator.num_processes,
            "torch_threads": torch.get_num_threads(),
        }
    )
    if args.log_file:
        log_step(args.log_file, accelerator, {"event": "end", **state_fingerprint(unwrapped)})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(args.output_dir, save_function=accelerator.save)
        tokenizer.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=2)
        push_from_args(args, args.output_dir)
    accelerator.wait_for_everyone()
    return results


def main(argv=None) -> dict:
    return training_function(parse_args(argv))


if __name__ == "__main__":
    main()
