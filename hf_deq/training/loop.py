"""The one training loop of every task: ``train(task, args) -> results``.

A task (``hf_deq.training.task``) brings its data, model and metric; the loop brings the rest, the same for every
family: Accelerate (DDP/FSDP/mixed precision through ``accelerate launch``), the guarded step, checkpoints and
exact resumes, per-step seeding, evaluation, ``--probe_steps`` probes, trackers, and the results in
``all_results.json`` with the run's histories and its picture (``training_curves.png``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..modeling_utils import count_parameters
from .accelerator import build_accelerator, seed_step
from .checkpoints import HISTORY_FILE, LOG_HISTORY_FILE, STATE_FILE, OutputDirLock, remove_previous_run
from .errors import CheckpointSaveError, NonFiniteWeightsError, OutputDirError
from .evaluation import epoch_evaluation_due, evaluate, solver_stats
from .optimizer import build_optimizer, build_scheduler
from .probe import build_probe, probe_summary
from .record import write_training_record
from .run_plot import run_title, write_training_curves
from .schedule import EstimatorSchedule
from .state import TrainingState
from .step import GuardedStep, nonfinite_tensors
from .task import TaskData, TrainingTask
from .threads import ThreadGovernor
from .tracking import RunTracker, peak_memory_mb


def build_dataloaders(args: argparse.Namespace, data: TaskData) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches (accelerate replaces the sampler with its seedable one: the order depends on
    ``(seed, epoch)`` only) and ordered evaluation batches."""
    common = {"collate_fn": data.collate_fn, "num_workers": args.dataloader_num_workers}
    generator = torch.Generator().manual_seed(args.seed)
    train = DataLoader(
        data.train, shuffle=True, batch_size=args.per_device_train_batch_size, generator=generator, **common
    )
    evaluation = DataLoader(data.validation, batch_size=args.per_device_eval_batch_size, **common)
    return train, evaluation


def data_loss(outputs, model) -> float:
    """The training loss without the Jacobian regularisation term (what is logged as ``train_loss``)."""
    loss = float(outputs.loss.detach())
    jacobian = getattr(outputs, "jacobian_loss", None)
    weight = getattr(model.config, "jacobian_reg_weight", 0.0)
    if jacobian is not None and weight > 0:
        loss -= weight * float(jacobian.detach())
    return loss


def num_parameters(model: torch.nn.Module) -> int:
    """Every parameter once (tied weights counted once), buffers never: ``count_parameters``."""
    return count_parameters(model)


@contextlib.contextmanager
def claimed_output_dir(args: argparse.Namespace, accelerator):
    """``--output_dir`` created and locked for this run (``OutputDirLock``, on the main process) while the block
    runs; with ``--overwrite_output_dir`` (and no resume) an earlier run's checkpoints, model and results are
    removed first, and said so, so that ``latest`` can never pick them."""
    lock = None
    if args.output_dir is not None and accelerator.is_main_process:
        try:
            os.makedirs(args.output_dir, exist_ok=True)
        except OSError as err:
            raise OutputDirError(f"--output_dir {args.output_dir} cannot be created: {err}") from None
        lock = OutputDirLock(args.output_dir).acquire()
    try:
        if (
            lock is not None
            and args.overwrite_output_dir
            and getattr(args, "resume_checkpoint", None) is None
        ):
            if removed := remove_previous_run(args.output_dir):
                accelerator.print(
                    f"--overwrite_output_dir: removed from {args.output_dir}: {', '.join(removed)}"
                )
        accelerator.wait_for_everyone()
        yield
    finally:
        if lock is not None:
            lock.release()


def train(task: TrainingTask, args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and save; return ``all_results.json``'s content plus the evaluation ``history`` and the
    training ``log_history``."""
    accelerator = build_accelerator(args)
    with claimed_output_dir(args, accelerator):
        return _train(task, args, accelerator)


def _train(task: TrainingTask, args: argparse.Namespace, accelerator) -> dict[str, Any]:
    from accelerate.logging import get_logger

    from ..hub import push_from_args

    logger = get_logger(__name__)
    logger.info(accelerator.state, main_process_only=False)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = ThreadGovernor(args.torch_num_threads, local_processes)
    logger.info(f"intra-op threads: {torch.get_num_threads()} ({threads.describe()})")
    checkpoint = getattr(args, "resume_checkpoint", None)

    with accelerator.main_process_first():
        raw = task.load_raw(args)
    model, processing_class = task.build_model(args, raw, checkpoint)
    with accelerator.main_process_first():
        data = task.load_data(args, raw, processing_class)
    train_dl, eval_dl = build_dataloaders(args, data)
    optimizer = build_optimizer(args, model)
    accumulation = args.gradient_accumulation_steps
    updates_per_epoch = math.ceil(len(train_dl) / accumulation / accelerator.num_processes)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = build_scheduler(args, optimizer, max_train_steps, accelerator.num_processes)
    model, optimizer, train_dl, eval_dl, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dl, eval_dl, lr_scheduler
    )
    updates_per_epoch = math.ceil(len(train_dl) / accumulation)
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    unwrapped = accelerator.unwrap_model(model)
    config = unwrapped.config
    estimator = getattr(config, "grad_estimator", None)  # None: an explicit (non-DEQ) model
    solver = getattr(config, "solver", None)
    probe = build_probe(args, data, unwrapped, accelerator.device, task.forward_kwargs)
    if not accelerator.is_main_process:  # built on every rank (a refusal stops all), used on the main one
        probe = None

    state = TrainingState()
    if checkpoint is not None:
        state = TrainingState.load(checkpoint, accelerator)
        state.check_position(
            str(Path(checkpoint) / STATE_FILE), updates_per_epoch, len(train_dl), accumulation
        )
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
    schedule = EstimatorSchedule(unwrapped, args.unrolled_warmup_steps, args.unrolled_warmup_depth)
    step = GuardedStep(
        accelerator, model, optimizer, lr_scheduler, args.max_grad_norm, args.max_nonfinite_steps,
        task.training_forward, log=accelerator.print,
    )  # fmt: skip
    step.guard.skipped = state.skipped_nonfinite_steps
    tracker = RunTracker(accelerator, args, task.project_name, max_train_steps, state.completed_steps)
    total_batch = args.per_device_train_batch_size * accelerator.num_processes * accumulation
    logger.info(
        f"***** Running training *****\n  Model = {args.model_name_or_path or args.preset} "
        f"({num_parameters(unwrapped):,} parameters), estimator {estimator}, solver {solver}\n"
        f"  Data = {data.dataset_name}: {len(data.train)} train, {len(data.validation)} eval examples\n"
        f"  Epochs = {num_epochs}, optimization steps = {max_train_steps}, total batch = {total_batch}"
    )

    def refuse_nonfinite(what: str) -> None:
        """No NaN/inf weight or buffer is ever saved (the step guard rolls such updates back: a last check)."""
        bad = nonfinite_tensors(unwrapped)
        if not step.all_ranks(not bad):
            names = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "") if bad else "on another rank"
            raise NonFiniteWeightsError(
                f"refusing to save {what}: the model holds non-finite values ({names}); the checkpoints written "
                "before are kept"
            )

    def save_checkpoint(name: str) -> None:
        refuse_nonfinite(f"checkpoint {name}")
        state.skipped_nonfinite_steps = step.skipped
        write = processing_class.save_pretrained if processing_class is not None else None
        state.save(
            accelerator, args.output_dir, name, (lambda d: write(d / "processing_class")) if write else None
        )
        if accelerator.is_main_process:
            push_from_args(
                args, model=unwrapped, processing_class=processing_class, step=state.completed_steps
            )

    last_eval: dict[str, Any] = {}

    def run_evaluation() -> None:
        last_eval.clear()
        with tracker.evaluation_progress(len(eval_dl)) as advance:

            def on_batch() -> None:
                advance()
                threads.update()

            last_eval.update(
                evaluate(model, eval_dl, accelerator, task, on_batch), step=state.completed_steps
            )
        metrics = {k: v for k, v in last_eval.items() if k.startswith("eval_")}
        state.history.append(
            {
                "epoch": state.epoch + 1,
                "step": state.completed_steps,
                "train_time": state.train_time,
                "train_cpu_time": state.train_cpu_time,
                **metrics,
            }
        )
        logger.info(f"step {state.completed_steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        tracker.log(metrics, step=state.completed_steps)

    checkpoint_every = int(args.checkpointing_steps) if (args.checkpointing_steps or "").isdigit() else None
    window = {"loss": 0.0, "nstep": 0.0, "residual": 0.0, "n": 0}
    last_window_loss = None  # the mean loss of the last logged window: the run's final training loss
    model.train()
    clock, cpu_clock = time.perf_counter(), time.process_time()
    for epoch in range(state.epoch, num_epochs):
        if state.completed_steps >= max_train_steps:
            break
        train_dl.set_epoch(epoch)
        skip = state.batches_in_epoch if epoch == state.epoch else 0
        batches = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        state.epoch, state.batches_in_epoch = epoch, skip
        for batch in batches:
            if schedule.update(state.completed_steps) and args.unrolled_warmup_steps:
                logger.info(f"step {state.completed_steps}: gradient estimator -> {config.grad_estimator}")
            seed_step(args.seed, epoch, state.batches_in_epoch, accelerator.process_index)
            result = step(task.prepare_train_batch(batch, args), state.completed_steps)
            state.batches_in_epoch += 1
            state.forward_time += result.forward_time
            state.backward_time += result.backward_time
            state.timed_steps += 1
            if not result.skipped:
                loss = data_loss(result.outputs, unwrapped)
                stats = solver_stats(result.outputs)
                state.loss_sum, state.loss_count = state.loss_sum + loss, state.loss_count + 1
                window["loss"] += loss
                window["nstep"] += stats["solver_nstep"]
                window["residual"] += stats["solver_residual"]
                window["n"] += 1
            if not accelerator.sync_gradients:
                continue
            state.completed_steps += 1
            state.skipped_nonfinite_steps = step.skipped
            threads.update()
            now, cpu_now = time.perf_counter(), time.process_time()
            state.train_time, clock = state.train_time + now - clock, now
            state.train_cpu_time, cpu_clock = state.train_cpu_time + cpu_now - cpu_clock, cpu_now
            done = state.completed_steps
            probed = probe.measure() if probe is not None and probe.due(done) else {}
            tracker.step(
                {"step": done, "loss": result.loss, "skipped_nonfinite_steps": step.skipped, **probed}
            )
            entry = {}  # this step's log_history entry
            if done % args.logging_steps == 0 or done == max_train_steps:
                n = max(window["n"], 1)
                logs = {
                    "train_loss": window["loss"] / n,
                    "solver_nstep": window["nstep"] / n,
                    "solver_residual": window["residual"] / n,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "skipped_nonfinite_steps": step.skipped,
                }
                postfix = {"loss": f"{logs['train_loss']:.3f}", "nstep": f"{logs['solver_nstep']:.1f}"}
                tracker.log(logs, step=done, postfix=postfix)
                last_window_loss = logs["train_loss"] if window["n"] else last_window_loss
                entry = logs if window["n"] else {k: logs[k] for k in ("lr", "skipped_nonfinite_steps")}
                window = dict.fromkeys(window, 0)
            if probed:
                tracker.log(probed, step=done)
                logger.info(
                    f"step {done}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in probed.items() if k != "probe_time")
                    + f" (probe {probed['probe_time']:.2f}s, not training time)"
                )
                entry = {**entry, **probed}
            if entry:
                state.log_history.append({"step": done, "train_time": state.train_time, **entry})
            if checkpoint_every and done % checkpoint_every == 0:
                save_checkpoint(f"step_{done}")
            if args.eval_steps and done % args.eval_steps == 0 and done < max_train_steps:
                run_evaluation()
            # probes, evaluation and checkpoints are not training time
            clock, cpu_clock = time.perf_counter(), time.process_time()
            if done >= max_train_steps:
                break
        last_epoch = epoch == num_epochs - 1 or state.completed_steps >= max_train_steps
        due = epoch_evaluation_due(epoch, last_epoch, args.eval_every_epochs, args.eval_steps)
        if due and last_eval.get("step") != state.completed_steps:  # not twice at one step (--eval_steps)
            run_evaluation()
        state.epoch, state.batches_in_epoch = epoch + 1, 0
        if args.checkpointing_steps == "epoch":
            save_checkpoint(f"epoch_{epoch}")
        clock, cpu_clock = time.perf_counter(), time.process_time()
    schedule.finish()  # the saved config names the target estimator
    if last_eval.get("step") != state.completed_steps:
        run_evaluation()
    tracker.close(unwrapped)

    timed = max(state.timed_steps, 1)
    results = {
        "train_runtime": state.train_time,
        "train_cpu_runtime": state.train_cpu_time,
        "train_loss": state.train_loss,
        "train_loss_last_window": last_window_loss,
        "train_steps": state.completed_steps,
        "train_samples": len(data.train),
        "epoch": state.completed_steps / updates_per_epoch,
        **{k: v for k, v in last_eval.items() if k.startswith("eval_")},
        "skipped_nonfinite_steps": step.skipped,
        "num_parameters": num_parameters(unwrapped),
        "grad_estimator": getattr(config, "grad_estimator", None),
        "solver": solver,
        "num_processes": accelerator.num_processes,
        "torch_num_threads": torch.get_num_threads(),
        "mixed_precision": accelerator.mixed_precision,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "forward_time_per_step": state.forward_time / timed,
        "backward_time_per_step": state.backward_time / timed,
        "unrolled_warmup_steps": args.unrolled_warmup_steps,
        "dataset_name": data.dataset_name,
        "dataset_config_name": data.dataset_config_name,
        **probe_summary(state.log_history),
    }
    if args.output_dir is not None:
        refuse_nonfinite(f"the model into {args.output_dir}")
        try:
            accelerator.wait_for_everyone()
            state_dict = accelerator.get_state_dict(model)  # FSDP: gathered on every rank (a collective)
            unwrapped.save_pretrained(
                args.output_dir,
                is_main_process=accelerator.is_main_process,
                save_function=accelerator.save,
                state_dict=state_dict,
            )
            if accelerator.is_main_process:
                if processing_class is not None:
                    processing_class.save_pretrained(args.output_dir)
                Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2))
                Path(args.output_dir, HISTORY_FILE).write_text(json.dumps(state.history, indent=2))
                Path(args.output_dir, LOG_HISTORY_FILE).write_text(json.dumps(state.log_history, indent=2))
                write_training_record(args.output_dir, task, args)
                title = run_title(args.output_dir)  # from the all_results.json just written
                write_training_curves(args.output_dir, state.history, state.log_history, title, logger.info)
            accelerator.wait_for_everyone()
        except OSError as err:
            raise CheckpointSaveError(
                f"could not write the final model into {args.output_dir} ({err.strerror or err}); the checkpoints "
                "written before are kept"
            ) from err
    if accelerator.is_main_process:
        push_from_args(
            args, args.output_dir, model=unwrapped, processing_class=processing_class, metrics=results
        )
    metric = f"eval_{task.metric_name}"
    logger.info(
        f"final {metric} {results.get(metric, math.nan):.4f} after {results['train_runtime']:.1f}s of training"
    )
    return {**results, "history": state.history, "log_history": state.log_history}


__all__ = ["build_dataloaders", "data_loss", "num_parameters", "train"]
