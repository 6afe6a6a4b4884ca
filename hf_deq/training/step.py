"""One guarded optimiser step: forward, a non-finite check decided alike on every rank, backward, a gradient
check, clipping, the update, a check of the updated weights; a refused step is skipped (its buffer updates, and
an update that made a weight non-finite, rolled back), counted, and the run stops after ``max_nonfinite_steps``
refused steps in a row."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DivergenceError


class NonFiniteStepGuard:
    """Counts refused steps and stops the run after ``max_in_a_row`` of them in a row (the last good checkpoint
    is kept: nothing is saved after a bad step).

    A step is bad when its loss is not finite (``check_loss``, before backward), when its loss is finite but a
    gradient is not (``check_gradients``: a diverging backward solve of ``implicit``, bf16 overflow in the
    Neumann/unrolled products), or when the update made a weight non-finite (``check_weights``: an infinite
    learning rate, a NaN weight decay; the caller rolls the update back). Only a step that passes all three ends a
    run of bad steps. Under fp16 loss scaling the scaler already skips and rescales on inf gradients (and must see
    them to lower the scale): ``inspect_gradients=False`` then."""

    def __init__(self, max_in_a_row: int = 10, inspect_gradients: bool = True) -> None:
        self.max_in_a_row = max_in_a_row
        self.inspect_gradients = inspect_gradients
        self.skipped = 0
        self.skipped_for_gradients = 0
        self.skipped_for_weights = 0
        self.in_a_row = 0

    def _refuse(self, what: str) -> bool:
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise DivergenceError(
                f"{self.in_a_row} training steps in a row had a non-finite {what}; stopping. The last good "
                "checkpoint is kept; lower the learning rate, add Jacobian regularisation or use bf16-safe settings."
            )
        return False

    def check_loss(self, loss: torch.Tensor | bool) -> bool:
        """True when the step may go on to backward; False when it must be skipped (and is counted)."""
        finite = loss if isinstance(loss, bool) else bool(torch.isfinite(loss.detach()).all())
        return True if finite else self._refuse("loss")

    def check_gradients(self, parameters: Iterable[torch.nn.Parameter] | bool) -> bool:
        """True when every gradient is finite (the update may be taken); False when the step must be skipped
        (and is counted). ``parameters`` may be the decision itself (a bool gathered over the ranks)."""
        if not self.inspect_gradients:
            finite = True
        elif isinstance(parameters, bool):
            finite = parameters
        else:
            finite = gradients_are_finite(parameters)
        if finite:
            return True
        self.skipped_for_gradients += 1
        return self._refuse("gradient")

    def check_weights(self, parameters: Iterable[torch.nn.Parameter] | bool) -> bool:
        """After the update: True when every weight is finite (the step is good and the run of bad steps ends);
        False when the update must be rolled back and the step counted as skipped. ``parameters`` may be the
        decision itself (a bool gathered over the ranks)."""
        finite = parameters if isinstance(parameters, bool) else tensors_are_finite(parameters)
        if finite:
            self.in_a_row = 0
            return True
        self.skipped_for_weights += 1
        return self._refuse("weight after the update")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2 parameters and gradients), else ``tensor`` itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def tensors_are_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every tensor (``None`` skipped) is free of NaN/inf (one device sync). Under FSDP2 each rank holds a
    shard of each: the verdict is then the minimum over the ranks, so that all of them take the same branch."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return True
    sharded = any(hasattr(t, "to_local") for t in tensors)
    flags = [torch.isfinite(_local(t)).all() for t in tensors]
    verdict = torch.stack([f.to(flags[0].device) for f in flags]).all().to(torch.int32).reshape(1)
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(verdict, op=torch.distributed.ReduceOp.MIN)
    return bool(verdict.item())


def gradients_are_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether the ``.grad`` of every tensor of ``parameters`` is free of NaN/inf (``tensors_are_finite`` of the
    gradients)."""
    return tensors_are_finite(p.grad for p in parameters)


def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """The names of the parameters and buffers of ``model`` that hold a NaN or inf (this rank's shards), checked
    before anything is saved."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(_local(t)).all())]


class BufferSync:
    """Under FSDP2 the buffers are not sharded but, unlike under DDP, not broadcast either: each rank's BatchNorm
    running statistics follow its own data. ``__call__`` after each optimizer step sets every floating-point
    persistent buffer to its mean over the ranks, so that every rank (and the saved model) holds the same
    statistics. A model without an FSDP2 module gets an empty list and costs nothing."""

    def __init__(self, model: torch.nn.Module) -> None:
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # torch without FSDP2
            FSDPModule = ()  # noqa: N806
        sharded = bool(FSDPModule) and any(isinstance(m, FSDPModule) for m in model.modules())
        self.buffers: list[torch.Tensor] = []
        if sharded:
            non_persistent = {
                f"{name}.{b}" if name else b
                for name, module in model.named_modules()
                for b in getattr(module, "_non_persistent_buffers_set", ())
            }
            self.buffers = [
                buffer
                for name, buffer in model.named_buffers()
                if buffer.is_floating_point() and name not in non_persistent
            ]

    @torch.no_grad()
    def __call__(self) -> None:
        if not self.buffers:
            return
        world = torch.distributed.get_world_size()
        for buffer in self.buffers:
            torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
            buffer.div_(world)


class BufferRollback:
    """Undo what a skipped step's forward pass did to the model's buffers (training-mode BatchNorm updates its
    running statistics before the loss is known to be non-finite). ``save()`` before the forward, ``restore()``
    when the step is skipped; a model without buffers costs nothing."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = [b for b in model.buffers() if b is not None]
        self.saved: list[torch.Tensor] = []

    def save(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def restore(self) -> None:
        for buffer, saved in zip(self.buffers, self.saved):
            buffer.copy_(saved)


class UpdateRollback:
    """Undo an optimizer update that made a weight non-finite: ``save()`` right before ``optimizer.step()`` copies
    the parameters and the optimizer's state (moments, step counts) into tensors allocated once (again only when
    the state changes, as at the first step), ``restore()`` copies them back and drops state the step created.
    It costs a copy of the parameters and the optimizer state per update, in memory and time (no host sync)."""

    def __init__(self, model: torch.nn.Module, optimizer) -> None:
        self.parameters = [p for p in model.parameters()]
        self.optimizer = optimizer
        self.saved_parameters: list[torch.Tensor] = []
        self.saved_state: dict[torch.Tensor, dict[str, Any]] = {}

    @torch.no_grad()
    def save(self) -> None:
        if not self.saved_parameters:
            self.saved_parameters = [p.detach().clone() for p in self.parameters]
        else:
            for saved, param in zip(self.saved_parameters, self.parameters):
                saved.copy_(param.detach())
        state = self.optimizer.state
        saved_state = {}
        for param, values in state.items():
            before = self.saved_state.get(param, {})
            copies = {}
            for key, value in values.items():
                old = before.get(key)
                if isinstance(value, torch.Tensor):
                    if (
                        isinstance(old, torch.Tensor)
                        and old.shape == value.shape
                        and old.dtype == value.dtype
                    ):
                        copies[key] = old.copy_(value)
                    else:
                        copies[key] = value.detach().clone()
                else:
                    copies[key] = value
            saved_state[param] = copies
        self.saved_state = saved_state

    @torch.no_grad()
    def restore(self) -> None:
        for saved, param in zip(self.saved_parameters, self.parameters):
            param.copy_(saved)
        state = self.optimizer.state
        for param in list(state):
            if param not in self.saved_state:
                del state[param]  # the step created it (the optimizer's first step)
                continue
            values = state[param]
            for key in list(values):
                if key not in self.saved_state[param]:
                    del values[key]
            for key, saved in self.saved_state[param].items():
                current = values.get(key)
                if isinstance(saved, torch.Tensor) and isinstance(current, torch.Tensor):
                    current.copy_(saved)
                else:
                    values[key] = saved.clone() if isinstance(saved, torch.Tensor) else saved


@dataclass
class StepResult:
    outputs: Any
    loss: float  # this rank's loss (NaN or inf when not finite)
    skipped: bool
    forward_time: float
    backward_time: float
    total_time: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GuardedStep:
    """``step(batch)``: one micro-batch of ``accelerator.accumulate``; on the last micro-batch of an update,
    clipping, ``optimizer.step()`` and ``lr_scheduler.step()``. The scheduler steps on skipped updates too, so that
    the learning rate is a function of the step count. With several processes the finite/non-finite decision is
    gathered (min over ranks), so every rank takes the same branch.

    Args:
        accelerator, model, optimizer, lr_scheduler: the prepared training objects.
        max_grad_norm: clip the gradient norm to this (``None``: no clipping).
        max_nonfinite_steps: consecutive non-finite updates skipped before the run stops (``NonFiniteStepGuard``).
        forward: ``forward(model, batch)`` returns the outputs with a ``loss``.
        log: where the guard's messages go.
    """

    def __init__(
        self,
        accelerator,
        model: torch.nn.Module,
        optimizer,
        lr_scheduler,
        max_grad_norm: float | None,
        max_nonfinite_steps: int,
        forward: Callable[[torch.nn.Module, dict], Any],
        log: Callable[[str], None] = print,
    ) -> None:
        self.accelerator, self.model, self.optimizer, self.lr_scheduler = (
            accelerator,
            model,
            optimizer,
            lr_scheduler,
        )
        self.max_grad_norm = max_grad_norm
        self.forward = forward
        self.guard = NonFiniteStepGuard(max_nonfinite_steps, inspect_gradients=accelerator.scaler is None)
        self.rollback = BufferRollback(model)
        self.update_rollback = UpdateRollback(model, optimizer)
        #: what must be finite after an update: the parameters and the floating-point buffers (BatchNorm statistics)
        self.checked_after_update = [
            *model.parameters(),
            *(b for b in model.buffers() if b.is_floating_point()),
        ]
        self.sync_buffers = BufferSync(model)
        self.log = log

    def all_ranks(self, flag: bool) -> bool:
        """``flag`` of every rank, and-ed (identity on one process)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.gather(value).min() > 0)

    def __call__(self, batch: dict, step: int) -> StepResult:
        accelerator, device = self.accelerator, self.accelerator.device
        with accelerator.accumulate(self.model):
            _sync(device)
            t0 = time.perf_counter()
            self.rollback.save()
            outputs = self.forward(self.model, batch)
            loss = outputs.loss
            _sync(device)
            t1 = time.perf_counter()
            ok = self.guard.check_loss(self.all_ranks(bool(torch.isfinite(loss.detach()).all())))
            t2 = t1
            if ok:
                accelerator.backward(loss)
                _sync(device)
                t2 = time.perf_counter()
                if accelerator.sync_gradients:
                    finite = True  # fp16: the gradient scaler decides
                    if self.guard.inspect_gradients:
                        finite = self.all_ranks(gradients_are_finite(self.model.parameters()))
                    ok = self.guard.check_gradients(finite)
                    if ok:
                        if self.max_grad_norm:
                            accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                        self.update_rollback.save()
                        self.optimizer.step()
                        weights = self.all_ranks(tensors_are_finite(self.checked_after_update))
                        ok = self.guard.check_weights(weights)
                        if ok:
                            self.sync_buffers()
                        else:
                            self.update_rollback.restore()
                            self.log(
                                f"step {step + 1}: the update made a weight non-finite, rolled back, skipped"
                            )
                    else:
                        self.log(f"step {step + 1}: non-finite gradient, step skipped")
            else:
                self.log(f"step {step + 1}: non-finite loss, step skipped")
            if not ok:
                self.rollback.restore()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
            _sync(device)
            t3 = time.perf_counter()
        return StepResult(outputs, float(loss.detach()), not ok, t1 - t0, t2 - t1, t3 - t0)

    @property
    def skipped(self) -> int:
        return self.guard.skipped


__all__ = [
    "BufferRollback",
    "BufferSync",
    "GuardedStep",
    "NonFiniteStepGuard",
    "StepResult",
    "UpdateRollback",
    "gradients_are_finite",
    "nonfinite_tensors",
    "tensors_are_finite",
]
