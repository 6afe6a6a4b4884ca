"""The estimator schedule: plain backprop through unrolled iterations for a warm-up, then the configured
gradient estimator."""

from __future__ import annotations


class EstimatorSchedule:
    """Plain backprop through unrolled iterations for the first ``warmup_steps`` optimizer steps, then the
    configured estimator (with its own ``grad_steps``, restored exactly). A model without DEQ estimator fields
    (``set_grad_estimator``: an explicit baseline) has nothing to schedule: the schedule does nothing, and a
    warm-up asked of it is an error. ``warmup_depth``: the iterations unrolled in the warm-up (default: the
    model's ``grad_steps``)."""

    def __init__(self, model, warmup_steps: int, warmup_depth: int | None = None) -> None:
        self.model = model
        self.warmup_steps = warmup_steps
        self.current: str | None = None
        config = model.config
        self.active = hasattr(model, "set_grad_estimator") and hasattr(config, "grad_estimator")
        if not self.active:
            if warmup_steps:
                raise ValueError(
                    f"--unrolled_warmup_steps {warmup_steps}: {type(model).__name__} has no DEQ gradient estimator"
                )
            return
        self.target = {"grad_estimator": config.grad_estimator, "grad_steps": config.grad_steps}
        self.warmup = {"grad_estimator": "unrolled", "grad_steps": warmup_depth or config.grad_steps}

    def update(self, completed_steps: int) -> bool:
        """Set the estimator for the step after ``completed_steps``; True when it changed."""
        phase = "warmup" if completed_steps < self.warmup_steps else "target"
        if not self.active or phase == self.current:
            return False
        fields = dict(self.warmup if phase == "warmup" else self.target)
        self.model.set_grad_estimator(fields.pop("grad_estimator"), **fields)
        self.current = phase
        return True

    def finish(self) -> None:
        """Back to the configured estimator, so that the saved config names it."""
        self.update(self.warmup_steps)


__all__ = ["EstimatorSchedule"]
