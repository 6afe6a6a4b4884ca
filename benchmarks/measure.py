"""Measuring a benchmark case: call and backward counts, time inside ``f``, round-robin timing, peak memory.

Every timing is the median of ``repeats`` measurements after one warm-up round; all cases of a table are timed
round-robin within each repeat, so that load from other processes hits them alike (quote ratios from one run
only). On CUDA every timed region is closed by ``torch.cuda.synchronize`` and the time inside ``f`` is read
from CUDA events (nothing syncs inside the solve); on CPU ``perf_counter`` brackets each call of ``f``.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation at the start of the measured region.
On CPU the same quantity is read from the PyTorch profiler (``profile_memory=True``): the peak of the bytes of
CPU tensors allocated inside the region and still alive (the running "Total Allocated" of the profiler's
memory events, minus its value at the start). Neither counts memory outside PyTorch tensors (oneDNN scratch
buffers, the allocator's cache, Python objects).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor


class Counter:
    """Counts calls of ``f`` and backward passes through it while ``enabled``."""

    def __init__(self) -> None:
        self.enabled = False
        self.forward = 0
        self.backward = 0

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0


class CountBackward(torch.autograd.Function):
    """Identity whose backward adds one to ``counter.backward``."""

    @staticmethod
    def forward(ctx, x: Tensor, counter: Counter) -> Tensor:
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.counter.backward += 1
        return grad, None


class FClock:
    """Accumulates the time spent inside ``f`` while ``enabled`` (CUDA events on CUDA, so nothing syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = False
        self._total = 0.0
        self._events: list = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, token) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append((token, event))
        else:
            self._total += time.perf_counter() - token

    def take(self) -> float:
        """Seconds inside ``f`` since the last call (call after synchronising)."""
        total = self._total + sum(a.elapsed_time(b) for a, b in self._events) / 1e3
        self._total, self._events = 0.0, []
        return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_stderr():
    """The profiler writes status lines straight to fd 2; hide them while it runs."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(
    device: torch.device, run: Callable[[], object], setup: Callable[[], object] | None = None
) -> float | None:
    """Peak bytes of tensors allocated by ``run`` above what was allocated when it started (see module doc).

    ``setup`` runs first, outside the measured region (e.g. dropping the previous step's gradients, so that
    freeing them inside the region does not hide the new ones). ``None`` when the CPU profiler fails.
    """
    if setup is not None:
        setup()
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        try:
            with quiet_stderr():
                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    run()
                prof.export_chrome_trace(path)
            with open(path) as fh:
                trace = json.load(fh)
        except Exception as exc:  # the profiler's trace format is not a stable API
            warnings.warn(f"CPU memory measurement failed: {exc!r}", RuntimeWarning, stacklevel=2)
            return None
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = [
        e["args"] for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0
    ]
    if not mem:
        return 0.0
    # "Total Allocated" is a process-wide running total; its value before the first event is the baseline.
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return float(max(0, max(m["Total Allocated"] for m in mem) - base))


class Timer:
    """Times named cases round-robin: one warm-up round, then ``repeats`` rounds; reports medians.

    The warm-up round is also the counting run: ``f`` counts its calls and the backward passes through it,
    and the value each case returns is kept (``counts``, ``outputs``).
    """

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device = device
        self.repeats = repeats
        self.counts: dict[str, tuple[int, int]] = {}
        self.outputs: dict[str, object] = {}
        self.f_times: dict[str, list[float]] = {}  # time inside f per timed repeat, when a clock is given
        self.raw: dict[str, list[float]] = {}  # every timed repeat

    def run(
        self,
        cases: dict[str, Callable[[], Callable[[], object]]],
        counter: Counter,
        clock: FClock | None = None,
    ) -> dict[str, float]:
        """``cases[name]()`` prepares one measurement (untimed) and returns the callable to time."""
        times: dict[str, list[float]] = {name: [] for name in cases}
        self.f_times = {name: [] for name in cases}
        for round_ in range(self.repeats + 1):
            for name, prepare in cases.items():
                timed = prepare()
                counter.reset()
                counter.enabled = round_ == 0
                if clock is not None:
                    clock.enabled = round_ > 0
                sync(self.device)
                start = time.perf_counter()
                out = timed()
                sync(self.device)
                elapsed = time.perf_counter() - start
                counter.enabled = False
                if clock is not None:
                    clock.enabled = False
                    f_time = clock.take()
                    if round_ > 0:
                        self.f_times[name].append(f_time)
                if round_ == 0:
                    self.counts[name] = (counter.forward, counter.backward)
                    self.outputs[name] = out
                else:
                    times[name].append(elapsed)
        self.raw = times
        return {name: statistics.median(ts) for name, ts in times.items()}
