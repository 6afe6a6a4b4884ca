"""The one training loop of every task: ``train(task, args, hooks) -> results``.

A task (``hf_deq.training.task``) brings its data, model and metric; the loop brings the rest, the same for every
family: Accelerate (DDP/FSDP/mixed precision through ``accelerate launch``), the guarded step, checkpoints and
exact resumes, per-step seeding, evaluation, ``--probe_steps`` probes, trackers, and the results in
``all_results.json`` with the run's histories and its picture (``training_curves.png``).

``train`` reads as its phases, each a function of one ``Run`` (the run's typed state): ``set_up``, then per epoch
``run_epoch`` (``train_micro_batch`` for each batch, ``after_step`` after each optimizer step, ``end_epoch``),
with ``evaluate_run`` and ``save_checkpoint`` where they are due, then ``finish``. Hooks
(``hf_deq.training.hooks``) see each checkpoint and the end."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from ..modeling_utils import count_parameters
from .accelerator import build_accelerator, seed_step
from .checkpoints import STATE_FILE, OutputDirLock, remove_previous_run
from .errors import NonFiniteWeightsError, OutputDirError
from .evaluation import epoch_evaluation_due, evaluate, solver_stats
from .hooks import TrainingHook
from .meters import RunningMeans, TrainingClock
from .optimizer import build_optimizer, build_scheduler
from .probe import GradientProbe, build_probe
from .results import final_results, write_run_files
from .schedule import EstimatorSchedule
from .state import TrainingState
from .step import GuardedStep, StepResult, nonfinite_tensors
from .task import TaskData, TrainingTask
from .threads import ThreadGovernor
from .tracking import RunTracker

if TYPE_CHECKING:
    from .arguments import TrainingArgs


def build_dataloaders(args: TrainingArgs, data: TaskData) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches of ``data.train`` (accelerate replaces the sampler with its seedable one: the
    order depends on ``(seed, epoch)`` only) and ordered evaluation batches of ``data.validation``; batch sizes,
    workers and seed from ``args``."""
    common = {"collate_fn": data.collate_fn, "num_workers": args.dataloader_num_workers}
    generator = torch.Generator().manual_seed(args.seed)
    train = DataLoader(
        data.train, shuffle=True, batch_size=args.per_device_train_batch_size, generator=generator, **common
    )
    evaluation = DataLoader(data.validation, batch_size=args.per_device_eval_batch_size, **common)
    return train, evaluation


def data_loss(outputs, jacobian_weight: float) -> float:
    """The training loss of ``outputs`` without their Jacobian regularisation term (what is logged as
    ``train_loss``); ``jacobian_weight``: the model's ``jacobian_reg_weight`` (0 for an explicit model)."""
    loss = float(outputs.loss.detach())
    if jacobian_weight > 0 and outputs.jacobian_loss is not None:
        loss -= jacobian_weight * float(outputs.jacobian_loss.detach())
    return loss


def num_parameters(model: torch.nn.Module) -> int:
    """Every parameter of ``model`` once (tied weights counted once), buffers never: ``count_parameters``."""
    return count_parameters(model)


@contextlib.contextmanager
def claimed_output_dir(args: TrainingArgs, accelerator):
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
        if lock is not None and args.overwrite_output_dir and args.resume_checkpoint is None:
            if removed := remove_previous_run(args.output_dir):
                accelerator.print(
                    f"--overwrite_output_dir: removed from {args.output_dir}: {', '.join(removed)}"
                )
        accelerator.wait_for_everyone()
        yield
    finally:
        if lock is not None:
            lock.release()


@dataclass
class Prepared:
    """What ``accelerator.prepare`` gave back, and the run's length in optimizer steps and epochs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    train_dl: DataLoader
    eval_dl: DataLoader
    updates_per_epoch: int
    max_train_steps: int
    num_epochs: int


@dataclass
class Run(Prepared):
    """The state of one run that the phases share: what ``set_up`` built (the ``Prepared`` model, optimizer,
    scheduler, loaders and run length, which it extends; the guarded step, the tracker), where the run is
    (``state``: the checkpointed ``TrainingState``), and what it measures (``clock``, the logging ``window``, the
    ``last_evaluation``)."""

    task: TrainingTask
    args: TrainingArgs
    accelerator: Any
    hooks: tuple[TrainingHook, ...]
    logger: Any
    threads: ThreadGovernor
    data: TaskData
    processing_class: Any
    unwrapped: torch.nn.Module
    is_deq: bool
    state: TrainingState
    schedule: EstimatorSchedule
    step: GuardedStep
    tracker: RunTracker
    probe: GradientProbe | None
    clock: TrainingClock = field(default_factory=TrainingClock)
    window: RunningMeans = field(default_factory=RunningMeans)
    #: the last evaluation's ``eval_*`` values and its ``step`` (empty before the first)
    last_evaluation: dict[str, Any] = field(default_factory=dict)
    #: the mean training loss of the last logged window: the run's final training loss
    last_window_loss: float | None = None

    @property
    def config(self):
        """The (unwrapped) model's config."""
        return self.unwrapped.config

    @property
    def grad_estimator(self) -> str | None:
        """The model's gradient estimator now; ``None`` for an explicit (non-DEQ) model."""
        return self.config.grad_estimator if self.is_deq else None

    @property
    def solver(self) -> str | None:
        """The model's forward solver; ``None`` for an explicit model."""
        return self.config.solver if self.is_deq else None

    @property
    def jacobian_weight(self) -> float:
        """The Jacobian regularisation weight (0 for an explicit model)."""
        return self.config.jacobian_reg_weight if self.is_deq else 0.0

    @property
    def checkpoint_every(self) -> int | None:
        """``--checkpointing_steps N`` as a number; ``None`` for ``epoch`` or no checkpoints."""
        steps = self.args.checkpointing_steps or ""
        return int(steps) if steps.isdigit() else None


def train(task: TrainingTask, args: TrainingArgs, hooks: Iterable[TrainingHook] = ()) -> dict[str, Any]:
    """Train, evaluate and save ``task``'s model as ``args`` say; ``hooks`` (``TrainingHook``) see each checkpoint
    and the end. Returns ``all_results.json``'s content plus the evaluation ``history`` and the training
    ``log_history``."""
    accelerator = build_accelerator(args)
    with claimed_output_dir(args, accelerator):
        run = set_up(task, args, accelerator, tuple(hooks))
        run.model.train()
        run.clock.start()
        for epoch in range(run.state.epoch, run.num_epochs):
            if run.state.completed_steps >= run.max_train_steps:
                break
            run_epoch(run, epoch)
        return finish(run)


def set_up(task: TrainingTask, args: TrainingArgs, accelerator, hooks: tuple[TrainingHook, ...] = ()) -> Run:
    """The ``Run`` of ``task`` and ``args`` on ``accelerator``, ready for its first step: data and model loaded,
    everything prepared, a checkpoint (``args.resume_checkpoint``) resumed, the start logged."""
    from accelerate.logging import get_logger

    logger = get_logger(__name__)
    logger.info(accelerator.state, main_process_only=False)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = ThreadGovernor(args.torch_num_threads, local_processes)
    logger.info(f"intra-op threads: {torch.get_num_threads()} ({threads.describe()})")
    with accelerator.main_process_first():
        raw = task.load_raw(args)
    model, processing_class = task.build_model(args, raw, args.resume_checkpoint)
    with accelerator.main_process_first():
        data = task.load_data(args, raw, processing_class)
    prepared = prepare_training(args, accelerator, model, data)
    unwrapped = accelerator.unwrap_model(prepared.model)
    probe = build_probe(args, data, unwrapped, accelerator.device, task.forward_kwargs)
    state = resume_state(args, accelerator, prepared)
    step = GuardedStep(
        accelerator, prepared.model, prepared.optimizer, prepared.lr_scheduler, args.max_grad_norm,
        args.max_nonfinite_steps, task.training_forward, log=accelerator.print,
    )  # fmt: skip
    step.guard.skipped = state.skipped_nonfinite_steps
    run = Run(
        task=task,
        args=args,
        accelerator=accelerator,
        hooks=hooks,
        logger=logger,
        threads=threads,
        data=data,
        processing_class=processing_class,
        **vars(prepared),
        unwrapped=unwrapped,
        is_deq=task.model_is_deq(unwrapped),
        state=state,
        schedule=EstimatorSchedule(unwrapped, args.unrolled_warmup_steps, args.unrolled_warmup_depth),
        step=step,
        tracker=RunTracker(
            accelerator, args, task.project_name, prepared.max_train_steps, state.completed_steps
        ),
        # built on every rank (a refusal stops all), used on the main one
        probe=probe if accelerator.is_main_process else None,
        clock=TrainingClock(state.train_time, state.train_cpu_time),
    )
    log_start(run)
    return run


def prepare_training(args: TrainingArgs, accelerator, model: torch.nn.Module, data: TaskData) -> Prepared:
    """The loaders, optimizer and scheduler of ``model`` on ``data``, all through ``accelerator.prepare``, and
    the run's length: ``--max_train_steps``, else ``--num_train_epochs`` epochs of optimizer steps."""
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
    return Prepared(
        model, optimizer, lr_scheduler, train_dl, eval_dl, updates_per_epoch, max_train_steps, num_epochs
    )


def resume_state(args: TrainingArgs, accelerator, prepared: Prepared) -> TrainingState:
    """A new ``TrainingState``, or the one of ``args.resume_checkpoint`` (model, optimizer, scheduler and RNG
    states loaded too) with its position checked against this run."""
    checkpoint = args.resume_checkpoint
    if checkpoint is None:
        return TrainingState()
    state = TrainingState.load(checkpoint, accelerator)
    state.check_position(
        str(Path(checkpoint) / STATE_FILE),
        prepared.updates_per_epoch,
        len(prepared.train_dl),
        args.gradient_accumulation_steps,
    )
    accelerator.print(f"Resumed from checkpoint: {checkpoint}")
    return state


def log_start(run: Run) -> None:
    """The run's opening log lines: model, data, length and batch."""
    args, accelerator = run.args, run.accelerator
    total_batch = (
        args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    )
    run.logger.info(
        f"***** Running training *****\n  Model = {args.model_name_or_path or args.preset} "
        f"({num_parameters(run.unwrapped):,} parameters), estimator {run.grad_estimator}, solver {run.solver}\n"
        f"  Data = {run.data.dataset_name}: {len(run.data.train)} train, {len(run.data.validation)} eval "
        f"examples\n  Epochs = {run.num_epochs}, optimization steps = {run.max_train_steps}, total batch = "
        f"{total_batch}"
    )


def run_epoch(run: Run, epoch: int) -> None:
    """Epoch ``epoch``: its batches (those a resumed epoch has seen skipped), each optimizer step followed by
    ``after_step``, then ``end_epoch``."""
    state = run.state
    run.train_dl.set_epoch(epoch)
    skip = state.batches_in_epoch if epoch == state.epoch else 0
    batches = run.accelerator.skip_first_batches(run.train_dl, skip) if skip else run.train_dl
    state.epoch, state.batches_in_epoch = epoch, skip
    for batch in batches:
        result = train_micro_batch(run, epoch, batch)
        if result is None:  # inside a gradient accumulation
            continue
        with run.clock.paused():  # probes, evaluation and checkpoints are not training time
            after_step(run, result)
        if state.completed_steps >= run.max_train_steps:
            break
    with run.clock.paused():
        end_epoch(run, epoch)


def train_micro_batch(run: Run, epoch: int, batch: dict) -> StepResult | None:
    """One micro-batch through the guarded step, counted; its ``StepResult`` when it completed an optimizer step
    (the clock's lap then), else ``None``."""
    args, state = run.args, run.state
    if run.schedule.update(state.completed_steps) and args.unrolled_warmup_steps:
        run.logger.info(f"step {state.completed_steps}: gradient estimator -> {run.grad_estimator}")
    seed_step(args.seed, epoch, state.batches_in_epoch, run.accelerator.process_index)
    batch = run.task.prepare_train_batch(batch, args)
    result = run.step(batch, state.completed_steps)
    run.clock.add_items(run.task.batch_items(batch))
    loss = None if result.skipped else data_loss(result.outputs, run.jacobian_weight)
    state.add_micro_batch(result.forward_time, result.backward_time, loss)
    if loss is not None:
        stats = solver_stats(result.outputs)
        run.window.add("train_loss", loss)
        run.window.add("solver_nstep", stats["solver_nstep"])
        run.window.add("solver_residual", stats["solver_residual"])
    if not run.accelerator.sync_gradients:
        return None
    state.completed_steps += 1
    state.skipped_nonfinite_steps = run.step.skipped
    run.threads.update()
    state.train_time, state.train_cpu_time = run.clock.lap()
    return result


def after_step(run: Run, result: StepResult) -> None:
    """After optimizer step ``run.state.completed_steps``: the probe when due, the ``--log_file`` line, the
    logging window when due, the log history entry, then a checkpoint and an evaluation when due."""
    args, state, done = run.args, run.state, run.state.completed_steps
    probed = run.probe.measure() if run.probe is not None and run.probe.due(done) else {}
    run.tracker.step(
        {"step": done, "loss": result.loss, "skipped_nonfinite_steps": run.step.skipped, **probed}
    )
    entry = {}  # this step's log_history entry
    if done % args.logging_steps == 0 or done == run.max_train_steps:
        entry = log_window(run)
    if probed:
        run.tracker.log(probed, step=done)
        run.logger.info(
            f"step {done}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in probed.items() if k != "probe_time")
            + f" (probe {probed['probe_time']:.2f}s, not training time)"
        )
        entry = {**entry, **probed}
    if entry:
        state.log_history.append({"step": done, "train_time": state.train_time, **entry})
    if run.checkpoint_every and done % run.checkpoint_every == 0:
        save_checkpoint(run, f"step_{done}")
    if args.eval_steps and done % args.eval_steps == 0 and done < run.max_train_steps:
        evaluate_run(run)


def log_window(run: Run) -> dict[str, Any]:
    """Log the logging window's means (trackers, progress bar) and start a new window; returns its log history
    entry (only ``lr`` and ``skipped_nonfinite_steps`` when every micro-batch of the window was skipped)."""
    window, done = run.window, run.state.completed_steps
    counted = window.count("train_loss") > 0
    logs = {
        "train_loss": window.mean("train_loss"),
        "solver_nstep": window.mean("solver_nstep"),
        "solver_residual": window.mean("solver_residual"),
        "lr": run.lr_scheduler.get_last_lr()[0],
        "skipped_nonfinite_steps": run.step.skipped,
    }
    postfix = {"loss": f"{logs['train_loss']:.3f}", "nstep": f"{logs['solver_nstep']:.1f}"}
    run.tracker.log(logs, step=done, postfix=postfix)
    window.reset()
    if not counted:
        return {k: logs[k] for k in ("lr", "skipped_nonfinite_steps")}
    run.last_window_loss = logs["train_loss"]
    return logs


def end_epoch(run: Run, epoch: int) -> None:
    """After epoch ``epoch``: its evaluation when due (never twice at one step), the position moved to the next
    epoch, and its checkpoint with ``--checkpointing_steps epoch``."""
    args, state = run.args, run.state
    last_epoch = epoch == run.num_epochs - 1 or state.completed_steps >= run.max_train_steps
    due = epoch_evaluation_due(epoch, last_epoch, args.eval_every_epochs, args.eval_steps)
    evaluated_here = run.last_evaluation.get("step") == state.completed_steps  # by --eval_steps: not twice
    if due and not evaluated_here:
        evaluate_run(run)
    state.epoch, state.batches_in_epoch = epoch + 1, 0
    if args.checkpointing_steps == "epoch":
        save_checkpoint(run, f"epoch_{epoch}")


def evaluate_run(run: Run) -> None:
    """Evaluate at the current step (with its progress bar): ``run.last_evaluation``, a ``history`` entry, one
    log line and the trackers."""
    state = run.state
    with run.tracker.evaluation_progress(len(run.eval_dl)) as advance:

        def on_batch() -> None:
            advance()
            run.threads.update()

        values = evaluate(run.model, run.eval_dl, run.accelerator, run.task, on_batch)
    run.last_evaluation = {**values, "step": state.completed_steps}
    metrics = {k: v for k, v in values.items() if k.startswith("eval_")}
    state.history.append(
        {
            "epoch": state.epoch + 1,
            "step": state.completed_steps,
            "train_time": state.train_time,
            "train_cpu_time": state.train_cpu_time,
            **metrics,
        }
    )
    run.logger.info(f"step {state.completed_steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    run.tracker.log(metrics, step=state.completed_steps)


def refuse_nonfinite(run: Run, what: str) -> None:
    """No NaN/inf weight or buffer is ever saved (the step guard rolls such updates back: a last check): raise
    ``NonFiniteWeightsError`` naming ``what`` was to be saved."""
    bad = nonfinite_tensors(run.unwrapped)
    if not run.step.all_ranks(not bad):
        names = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "") if bad else "on another rank"
        raise NonFiniteWeightsError(
            f"refusing to save {what}: the model holds non-finite values ({names}); the checkpoints written "
            "before are kept"
        )


def save_checkpoint(run: Run, name: str) -> None:
    """Checkpoint ``name`` (``step_N`` / ``epoch_N``) with the processing class, then ``on_checkpoint`` of every
    hook."""
    refuse_nonfinite(run, f"checkpoint {name}")
    state, processing_class = run.state, run.processing_class
    state.skipped_nonfinite_steps = run.step.skipped
    write = None
    if processing_class is not None:

        def write(folder) -> None:
            processing_class.save_pretrained(folder / "processing_class")

    path = state.save(run.accelerator, run.args.output_dir, name, write)
    for hook in run.hooks:
        hook.on_checkpoint(run, path, state.completed_steps)


def finish(run: Run) -> dict[str, Any]:
    """The run's end: the configured estimator back, a last evaluation unless one ran at this step, the
    trackers closed, the final model and results saved (``write_run_files``, refused when a weight is not
    finite), then ``on_end`` of every hook. Returns the results plus ``history`` and ``log_history``."""
    args, state = run.args, run.state
    run.schedule.finish()  # the saved config names the target estimator
    if run.last_evaluation.get("step") != state.completed_steps:
        evaluate_run(run)
    run.tracker.close(run.unwrapped)
    results = final_results(run)
    if args.output_dir is not None:
        refuse_nonfinite(run, f"the model into {args.output_dir}")
        write_run_files(run, results)
    for hook in run.hooks:
        hook.on_end(run, args.output_dir, results)
    metric = f"eval_{run.task.metric_name}"
    run.logger.info(
        f"final {metric} {results.get(metric, math.nan):.4f} after {results['train_runtime']:.1f}s of training"
    )
    return {**results, "history": state.history, "log_history": state.log_history}


__all__ = [
    "Run",
    "after_step",
    "build_dataloaders",
    "data_loss",
    "end_epoch",
    "evaluate_run",
    "finish",
    "num_parameters",
    "prepare_training",
    "run_epoch",
    "save_checkpoint",
    "set_up",
    "train",
    "train_micro_batch",
]
