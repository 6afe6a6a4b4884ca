"""The intra-op thread count of a run without ``--torch_num_threads``: the CPUs other processes leave free (from
``/proc/stat``, this process's own CPU time taken out), followed while the run trains; the user's choice (the
flag, ``OMP_NUM_THREADS``) always wins."""

from __future__ import annotations

import pytest
import torch
from script_loading import load_script
from tiny_runs import mdeq_args

from hf_deq.training import threads
from hf_deq.training.threads import (
    FreeCPUMeter,
    ThreadGovernor,
    cpu_jiffies,
    threads_for_free_cpus,
    user_chose_threads,
)


@pytest.mark.parametrize(
    ("free", "cpus", "processes", "expected"),
    [
        (2.0, 2, 1, 2),  # quiet: every CPU
        (1.0, 2, 1, 1),  # beside one busy process
        (0.0, 2, 1, 1),  # beside three: never fewer than one
        (1.75, 2, 1, 2),  # a little noise from others does not cost a thread
        (1.6, 2, 1, 1),
        (16.0, 8, 1, 8),  # never more than the CPUs allowed
        (8.0, 8, 4, 2),  # split between the processes of the machine
        (-0.5, 4, 1, 1),
    ],
)
def test_threads_for_free_cpus(free, cpus, processes, expected):
    assert threads_for_free_cpus(free, cpus, processes) == expected


def _write_stat(path, cpu_ticks: dict[int, tuple[int, int]]) -> None:
    """A /proc/stat with, per CPU, (busy user ticks, idle ticks)."""
    total = [sum(v) for v in zip(*cpu_ticks.values())]
    lines = [f"cpu  {total[0]} 0 0 {total[1]} 0 0 0 0 0 0"]
    lines += [f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0" for i, (busy, idle) in cpu_ticks.items()]
    path.write_text("\n".join([*lines, "intr 1 2 3", ""]))


def test_cpu_jiffies_and_the_meter_read_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    _write_stat(stat, {0: (100, 900), 1: (50, 950), 2: (0, 1000)})
    assert cpu_jiffies([0, 1], stat) == (150, 2000)  # the CPUs asked for only
    assert cpu_jiffies([0], tmp_path / "missing") is None

    now = [0.0]
    meter = FreeCPUMeter(stat, clock=lambda: now[0])
    meter.cpus = [0, 1]
    meter._last = meter._sample()
    # 100 s later: CPU 0 was busy all the time (another process), CPU 1 idle
    _write_stat(stat, {0: (100 + 10_000, 900), 1: (50, 950 + 10_000), 2: (0, 1000)})
    now[0] = 100.0
    assert meter.free() == pytest.approx(1.0, abs=0.05)  # this test's own CPU time over 100 s is ~0


def test_user_choice_wins(monkeypatch):
    assert user_chose_threads(3, {}) and user_chose_threads(None, {"OMP_NUM_THREADS": "2"})
    assert not user_chose_threads(None, {}) and not user_chose_threads(None, {"OMP_NUM_THREADS": " "})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    governor = ThreadGovernor(1)
    assert torch.get_num_threads() == 1 and governor.describe() == "--torch_num_threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    governor = ThreadGovernor(None)
    assert governor.meter is None and governor.describe() == "OMP_NUM_THREADS"


class FakeMeter:
    """Free CPUs set by the test; a clock the test moves."""

    def __init__(self, cpus: int, free: float):
        self.cpus, self.free_cpus, self.now = list(range(cpus)), free, 0.0

    def clock(self) -> float:
        return self.now

    def free(self) -> float:
        return self.free_cpus


def test_the_governor_follows_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    meter = FakeMeter(cpus=4, free=4.0)
    governor = ThreadGovernor(None, meter=meter, interval_s=3.0, sleep=lambda s: None)
    assert torch.get_num_threads() == 4
    meter.free_cpus = 1.0  # load arrives
    meter.now = 2.9
    governor.update()
    assert torch.get_num_threads() == 4  # not re-checked before the interval
    meter.now = 3.1
    governor.update()
    assert torch.get_num_threads() == 1 and governor.changes == [(4, 1)]
    meter.free_cpus, meter.now = 3.0, 6.5  # and leaves
    governor.update()
    assert torch.get_num_threads() == 3

    ranks = ThreadGovernor(None, num_processes=2, meter=FakeMeter(4, 4.0), sleep=lambda s: None)
    assert torch.get_num_threads() == 2
    ranks.meter.free_cpus, ranks.meter.now = 0.0, 100.0
    ranks.update()  # the ranks of one job would count each other as load: chosen once
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("others_busy", [False, True])
def test_a_run_without_the_flag_takes_the_free_cpus(
    tmp_path, monkeypatch, fresh_accelerate_state, others_busy
):
    cpus = len(threads.allowed_cpus())
    if cpus < 2:
        pytest.skip("one CPU: one thread whatever the load")
    ticks = [0, 0]

    def fake_jiffies(wanted, stat=None):  # every CPU idle, or every CPU busy with another process
        ticks[0] += 1000 * len(wanted) if others_busy else 0
        ticks[1] += 1000 * len(wanted)
        return tuple(ticks)

    monkeypatch.setattr(threads, "cpu_jiffies", fake_jiffies)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    argv = mdeq_args(tmp_path / "out", steps=2)
    i = argv.index("--torch_num_threads")
    del argv[i : i + 2]
    results = load_script("train_mdeq_classifier").main(argv)
    assert results["torch_num_threads"] == (1 if others_busy else cpus)
