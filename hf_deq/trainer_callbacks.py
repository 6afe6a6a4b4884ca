"""``transformers.Trainer`` callbacks that look inside the solve while a DEQ fine-tunes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from .diagnostics import gradient_alignment


class GradientAlignmentCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps, measure ``gradient_alignment`` of the model on ``probe_batch``
    (a fixed batch with labels) and log ``grad_alignment_cosine`` and ``grad_alignment_relative_error``.

    The figures go into the next log line (``Trainer.state.log_history``, so ``trainer_state.json``, and the
    ``logs`` that the report-to integrations listed after this callback receive) and into ``self.history``.
    Probing changes neither the weights nor the RNG stream of training (``gradient_alignment``).

    ``Trainer(..., callbacks=[GradientAlignmentCallback(batch, every_n_steps=50)])``
    """

    def __init__(self, probe_batch: Mapping[str, Any], every_n_steps: int, **alignment_kwargs: Any) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if "labels" not in probe_batch:
            raise ValueError("probe_batch needs 'labels': the alignment compares gradients of the loss")
        self.probe_batch = dict(probe_batch)
        self.every_n_steps = every_n_steps
        self.alignment_kwargs = alignment_kwargs
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step % self.every_n_steps:
            return control
        device = next(model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.probe_batch.items()}
        result = gradient_alignment(model, batch, **self.alignment_kwargs)
        metrics = result.as_metrics()
        self.history.append({"step": state.global_step, **metrics})
        self._pending = metrics
        control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is not None and logs is not None:
            logs.update(self._pending)
            if state.log_history:
                state.log_history[-1].update(self._pending)
            self._pending = None
        return control


__all__ = ["GradientAlignmentCallback"]
