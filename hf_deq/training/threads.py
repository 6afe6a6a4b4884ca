"""The intra-op thread count of a run when ``--torch_num_threads`` is not given: the CPUs that are actually free.

A DEQ step is thousands of tiny operators. With more OpenMP threads than free CPUs, every parallel region waits
for a thread the kernel has descheduled, and a run beside one or three busy processes slowed 3.4x and 12.1x. So,
unless the user chose (``--torch_num_threads``, or ``OMP_NUM_THREADS`` in the environment), the run takes as many
threads as CPUs of its affinity mask are free (others' CPU use from ``/proc/stat``; ``os.getloadavg`` where that
is missing), split between the processes of this machine, and a single-process run re-checks every few seconds,
between optimizer steps, so that load arriving or leaving later is followed."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: a CPU counts as free when at most this fraction of it is used by other processes (others' use is rounded)
FREE_CPU_ROUNDING = 0.3
#: seconds between two re-checks of the free CPUs in a single-process run
RECHECK_INTERVAL_S = 3.0
#: what a sample of ``/proc/stat`` takes at the start, in seconds
START_SAMPLE_S = 0.25
#: where Linux counts each CPU's busy and idle time
PROC_STAT = "/proc/stat"


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where that is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cpu_jiffies(cpus: list[int], stat: str | os.PathLike = PROC_STAT) -> tuple[int, int] | None:
    """``(busy, total)`` clock ticks of ``cpus`` since boot from ``/proc/stat``; None where it cannot be read."""
    wanted = {f"cpu{i}" for i in cpus}
    busy = total = 0
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def threads_for_free_cpus(free: float, num_cpus: int, num_processes: int = 1) -> int:
    """Threads of one of ``num_processes`` processes when ``free`` of ``num_cpus`` CPUs are free: a CPU others use
    for more than ``FREE_CPU_ROUNDING`` of its time is not free; at least 1, at most ``num_cpus``."""
    usable = math.floor(max(free, 0.0) + FREE_CPU_ROUNDING)
    return max(1, min(num_cpus, usable // max(num_processes, 1)))


class FreeCPUMeter:
    """The CPUs of the affinity mask that other processes leave free, measured between two calls: the ticks all
    of them spent busy, minus this process's own CPU time (all its threads), over the wall time between."""

    def __init__(self, stat: str | os.PathLike = PROC_STAT, clock: Callable[[], float] = time.monotonic):
        self.cpus, self.stat, self.clock = allowed_cpus(), stat, clock
        self.ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, tuple[int, int] | None]:
        return self.clock(), time.process_time(), cpu_jiffies(self.cpus, self.stat)

    def free(self) -> float:
        """Free CPUs since the previous call (or since construction); ``num_cpus - loadavg`` without
        ``/proc/stat``."""
        (wall0, own0, ticks0), (wall1, own1, ticks1) = self._last, self._sample()
        self._last = (wall1, own1, ticks1)
        n = len(self.cpus)
        if ticks0 is None or ticks1 is None or ticks1[1] <= ticks0[1]:
            try:
                return n - os.getloadavg()[0]
            except (AttributeError, OSError):
                return float(n)
        busy_cpus = (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1]) * n
        own_cpus = (own1 - own0) / max(wall1 - wall0, 1e-9)
        return n - max(busy_cpus - own_cpus, 0.0)


def user_chose_threads(flag: int | None, environ: dict[str, str] | None = None) -> bool:
    """Whether the thread count is the user's: ``--torch_num_threads`` or ``OMP_NUM_THREADS`` given."""
    environ = os.environ if environ is None else environ
    return flag is not None or bool(environ.get("OMP_NUM_THREADS", "").strip())


class ThreadGovernor:
    """Sets torch's intra-op threads for a run: the user's count once, or the free CPUs' (``threads_for_free_cpus``)
    at the start and, in a single-process run, again at ``update()`` every ``interval_s`` seconds. ``update()`` is
    called between optimizer steps: it reads the clock, and only every ``interval_s`` ``/proc/stat``."""

    def __init__(
        self,
        flag: int | None,
        num_processes: int = 1,
        interval_s: float = RECHECK_INTERVAL_S,
        meter: FreeCPUMeter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.flag, self.automatic = flag, not user_chose_threads(flag)
        self.num_processes = num_processes
        self.changes: list[tuple[int, int]] = []  # (from, to) of each change after the start
        if not self.automatic:
            if flag is not None:
                torch.set_num_threads(flag)
            self.meter, self.next_check = None, math.inf
            return
        self.meter = meter or FreeCPUMeter()
        sleep(START_SAMPLE_S)  # this process is idle meanwhile: what is busy is the others
        torch.set_num_threads(self._target())
        adaptive = num_processes == 1  # ranks of one job would count each other as load
        self.interval_s = interval_s
        self.next_check = self.meter.clock() + interval_s if adaptive else math.inf

    def describe(self) -> str:
        """Where the thread count comes from, for the log."""
        if not self.automatic:
            return "--torch_num_threads" if self.flag is not None else "OMP_NUM_THREADS"
        every = f", re-checked every {self.interval_s:g} s" if self.next_check != math.inf else ""
        return f"the CPUs other processes leave free{every}; --torch_num_threads N fixes it"

    def _target(self) -> int:
        assert self.meter is not None
        return threads_for_free_cpus(self.meter.free(), len(self.meter.cpus), self.num_processes)

    def update(self) -> None:
        """Re-check the free CPUs if ``interval_s`` has passed (adaptive runs only) and follow them."""
        if self.meter is None or self.meter.clock() < self.next_check:
            return
        self.next_check = self.meter.clock() + self.interval_s
        target, current = self._target(), torch.get_num_threads()
        if target != current:
            torch.set_num_threads(target)
            self.changes.append((current, target))


__all__ = [
    "FreeCPUMeter",
    "ThreadGovernor",
    "allowed_cpus",
    "cpu_jiffies",
    "threads_for_free_cpus",
    "user_chose_threads",
]
