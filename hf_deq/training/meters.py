"""What the loop measures while it trains: ``TrainingClock`` (wall and CPU seconds of training only, the items
trained on per second) and ``RunningMeans`` (weighted means of named values over a logging window)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class TrainingClock:
    """Wall (``time.perf_counter``) and CPU (``time.process_time``) seconds of training, with what came before a
    resume: ``start()`` marks now, ``lap()`` adds the seconds since the mark to the totals and marks again,
    ``paused()`` is a block whose seconds are not training time (evaluation, checkpoints, probes). ``add_items(n)``
    counts what was trained on (tokens or samples), for ``items_per_second``.

    Args:
        wall_time: wall seconds of training already done (a resumed run's ``train_time``).
        cpu_time: CPU seconds of training already done (``train_cpu_time``).
        wall_clock / cpu_clock: the clocks read (tests pass fakes).
    """

    def __init__(
        self,
        wall_time: float = 0.0,
        cpu_time: float = 0.0,
        wall_clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.wall_time, self.cpu_time = wall_time, cpu_time
        self.wall_clock, self.cpu_clock = wall_clock, cpu_clock
        self.items = 0
        self.items_wall_time = 0.0  # the wall seconds of this process's laps (what the items took)
        self.start()

    def start(self) -> None:
        """Mark now: the next ``lap`` counts from here."""
        self.wall_mark, self.cpu_mark = self.wall_clock(), self.cpu_clock()

    def lap(self) -> tuple[float, float]:
        """Add the seconds since the mark to the totals, mark now; returns the totals ``(wall, cpu)``."""
        wall, cpu = self.wall_clock(), self.cpu_clock()
        self.wall_time += wall - self.wall_mark
        self.items_wall_time += wall - self.wall_mark
        self.cpu_time += cpu - self.cpu_mark
        self.wall_mark, self.cpu_mark = wall, cpu
        return self.wall_time, self.cpu_time

    @contextmanager
    def paused(self) -> Iterator[None]:
        """A block that is not training time: the clock restarts when it ends."""
        try:
            yield
        finally:
            self.start()

    def add_items(self, count: int) -> None:
        """Count ``count`` items (tokens or samples) trained on."""
        self.items += count

    @property
    def items_per_second(self) -> float:
        """Items counted by ``add_items`` per wall second of the laps of this process (0 before any lap)."""
        return self.items / self.items_wall_time if self.items_wall_time > 0 else 0.0


class RunningMeans:
    """Weighted means of named values: ``add(name, value, weight)``, ``means()``, ``reset()``."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        """Add ``value`` with ``weight`` to the mean of ``name``."""
        self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def mean(self, name: str, default: float = 0.0) -> float:
        """The mean of ``name``, or ``default`` when nothing was added to it."""
        weight = self.weights.get(name, 0.0)
        return self.sums[name] / weight if weight else default

    def means(self) -> dict[str, float]:
        """Every name that has a weight, with its mean."""
        return {name: self.sums[name] / w for name, w in self.weights.items() if w}

    def count(self, name: str) -> float:
        """The summed weight of ``name`` (the number of values when each weighs 1)."""
        return self.weights.get(name, 0.0)

    def reset(self) -> None:
        """Forget every value (a new window)."""
        self.sums.clear()
        self.weights.clear()


__all__ = ["RunningMeans", "TrainingClock"]
