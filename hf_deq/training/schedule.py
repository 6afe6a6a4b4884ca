"""The estimator schedule: plain backprop through unrolled iterations for a warm-up, then the configured
gradient estimator."""

from __future__ import annotations


class EstimatorSchedule:
    """Plain backprop through unrolled iterations for the first ``warmup_steps`` optimizer steps, then the
    configured estimator (with its own ``grad_steps``, restored exactly)."""

    def __init__(self, model, warmup_steps: int, warmup_depth: int | None = None) -> None:
        self.model = model
        self.warmup_steps = warmup_steps
        config = model.config
        self.target = {"grad_estimator": config.grad_estimator, "grad_steps": config.grad_steps}
        self.warmup = {"grad_estimator": "unrolled", "grad_steps": warmup_depth or config.grad_steps}
        self.current: str | None = None

    def update(self, completed_steps: int) -> bool:
        """Set the estimator for the step after ``completed_steps``; True when it changed."""
        phase = "warmup" if completed_steps < self.warmup_steps else "target"
        if phase == self.current:
            return False
        fields = dict(self.warmup if phase == "warmup" else self.target)
        self.model.set_grad_estimator(fields.pop("grad_estimator"), **fields)
        self.current = phase
        return True

    def finish(self) -> None:
        """Back to the configured estimator, so that the saved config names it."""
        self.update(self.warmup_steps)


__all__ = ["EstimatorSchedule"]
