"""Holding up under load (``scripts/benchmark_load.py``): slices of the training scripts timed quiet and beside
busy processes that the benchmark starts and stops, under several thread settings, in one run.

A *busy process* is a CPU-bound loop on one CPU (pure Python, or a one-thread torch matrix loop). A *job* is a
fixed slice of a training script run as a subprocess (its ``train_runtime``, the training wall time without
start-up and evaluation, is what is compared). A *setting* is how the job's threads are chosen: ``library`` (no
thread flag: the training layer's defaults), ``old`` (what the library did before it chose: every CPU torch
would use, the OpenMP defaults) and ``single`` (``--torch_num_threads 1``, the old advice)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

#: code of one busy process, by kind; each keeps one CPU busy until it is stopped
BUSY_LOOPS = {
    "python": "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) % 2147483648\n",
    "torch": (
        "import torch\ntorch.set_num_threads(1)\na = torch.randn(192, 192)\n"
        "while True:\n    a = torch.tanh(a @ a * 0.01)\n"
    ),
}

#: environment variables that choose threads or OpenMP's behaviour: removed from a job's environment, so that each
#: setting starts from the same clean slate
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class Job:
    """A fixed slice of a training script: ``argv`` after ``python``."""

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """How a job's threads are chosen: extra flags and environment variables."""

    name: str
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class Timing:
    """One run of a job: training wall and CPU time (``all_results.json``), the whole process's wall time, the
    threads it ended with, and the machine's 1-minute load average when it started. A run stopped at the time
    limit has ``timed_out`` and, as its training time, the limit (a lower bound)."""

    job: str
    setting: str
    busy: int
    repeat: int
    train_runtime: float
    train_cpu_runtime: float
    process_wall: float
    torch_num_threads: int
    loadavg_before: float
    eval_loss: float | None = None
    timed_out: bool = False


@dataclass
class LoadResults:
    timings: list[Timing] = field(default_factory=list)
    loadavg_start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def median(self, job: str, setting: str, busy: int) -> float:
        values = [t.train_runtime for t in self.timings if (t.job, t.setting, t.busy) == (job, setting, busy)]
        return statistics.median(values) if values else float("nan")

    def timed_out(self, job: str, setting: str, busy: int) -> bool:
        return any(t.timed_out for t in self.timings if (t.job, t.setting, t.busy) == (job, setting, busy))

    def threads(self, job: str, setting: str, busy: int) -> list[int]:
        return [
            t.torch_num_threads for t in self.timings if (t.job, t.setting, t.busy) == (job, setting, busy)
        ]


def main_job(steps: int) -> Job:
    """The README main job (``train_mdeq_classifier.py`` at its defaults: MDEQ-Tiny on digits), ``steps`` steps."""
    argv = ("--max_train_steps", str(steps), "--max_eval_samples", "64", "--disable_tqdm")
    return Job("main job (mdeq-tiny-digits)", (str(SCRIPTS / "train_mdeq_classifier.py"), *argv))


def char_job(train_file: str | os.PathLike, steps: int) -> Job:
    """The char recipe (``--config scripts/configs/deq-transformer-char-upg.json``) on ``train_file``, ``steps``
    steps, evaluated once on 64 blocks."""
    config = SCRIPTS / "configs" / "deq-transformer-char-upg.json"
    argv = ("--config", str(config), "--train_file", str(train_file), "--max_train_steps", str(steps))
    argv += ("--max_eval_samples", "64", "--disable_tqdm")
    return Job("char recipe (deq-transformer-char)", (str(SCRIPTS / "train_deq_lm.py"), *argv))


def torch_default_threads(python: str = sys.executable) -> int:
    """The intra-op thread count torch picks by itself in a fresh process (no thread variable set)."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([python, "-c", code], env=clean_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def standard_settings(python: str = sys.executable) -> dict[str, Setting]:
    """``library`` (no flag), ``old`` (torch's own thread count and OpenMP's default spin of about 3 ms, what
    the library did before it chose), ``single`` (one thread) and ``old_passive`` (``old`` with OpenMP's threads
    sleeping at once when they wait, ``OMP_WAIT_POLICY=PASSIVE``), ``library_passive`` (``library`` so)."""
    every = ("--torch_num_threads", str(torch_default_threads(python)))
    return {
        "library": Setting("library"),
        "old": Setting(
            "old",
            every,
            (("GOMP_SPINCOUNT", "300000"),),
        ),
        "single": Setting("single", ("--torch_num_threads", "1")),
        "old_passive": Setting(
            "old_passive",
            every,
            (("OMP_WAIT_POLICY", "PASSIVE"),),
        ),
        "library_passive": Setting("library_passive", (), (("OMP_WAIT_POLICY", "PASSIVE"),)),
    }


def clean_env(extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """This environment without ``THREAD_ENV``, offline, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@contextmanager
def busy_processes(count: int, kind: str = "python", python: str = sys.executable) -> Iterator[list]:
    """``count`` busy processes (``BUSY_LOOPS[kind]``, one thread each), stopped (and waited for) on exit."""
    if kind not in BUSY_LOOPS:
        raise ValueError(f"busy process kind {kind!r}: choose one of {sorted(BUSY_LOOPS)}")
    env = {**clean_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([python, "-c", BUSY_LOOPS[kind]], env=env, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        time.sleep(2.0 if count else 0.0)  # running (and past torch's import) before the job starts
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_job(
    job: Job,
    setting: Setting,
    busy: int,
    repeat: int,
    python: str = sys.executable,
    timeout: float | None = None,
) -> Timing:
    """Run ``job`` under ``setting`` into a temporary folder; its ``all_results.json`` gives the times. A run
    longer than ``timeout`` seconds is stopped and reported as ``timed_out``."""
    with tempfile.TemporaryDirectory(prefix="hf_deq_load_") as out:
        cmd = [python, *job.argv, *setting.flags, "--output_dir", out]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, env=clean_env(setting.env), capture_output=True, text=True, cwd=REPO, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            nan = float("nan")
            return Timing(
                job.name, setting.name, busy, repeat, float(timeout), nan, float(timeout), 0, load, None, True
            )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
        results = json.loads(Path(out, "all_results.json").read_text())
    return Timing(
        job.name,
        setting.name,
        busy,
        repeat,
        results["train_runtime"],
        results["train_cpu_runtime"],
        wall,
        results["torch_num_threads"],
        load,
        results.get("eval_loss"),
    )


def run_load_benchmark(
    jobs: Sequence[Job],
    settings: Sequence[Setting],
    busy_counts: Sequence[int] = (0, 1, 3),
    repeats: int = 2,
    busy_kind: str = "python",
    python: str = sys.executable,
    echo: Callable[[str], None] = print,
    timeout: float | None = None,
) -> LoadResults:
    """Every job under every setting beside each number of busy processes, ``repeats`` times; within a repeat the
    settings of a job run back to back beside the same busy processes, so they see the same load."""
    results = LoadResults(loadavg_start=os.getloadavg())
    for repeat in range(repeats):
        for busy in busy_counts:
            with busy_processes(busy, busy_kind, python):
                for job in jobs:
                    for setting in settings:
                        timing = run_job(job, setting, busy, repeat, python, timeout)
                        results.timings.append(timing)
                        if timing.timed_out:
                            echo(
                                f"repeat {repeat} busy {busy} {job.name} [{setting.name}]: stopped after {timeout} s"
                            )
                            continue
                        echo(
                            f"repeat {repeat} busy {busy} {job.name} [{setting.name}]: "
                            f"{timing.train_runtime:.2f} s training ({timing.train_cpu_runtime:.2f} s CPU), "
                            f"{timing.torch_num_threads} thread(s) at the end, load {timing.loadavg_before:.2f}"
                        )
    return results


def slowdown_lines(
    results: LoadResults, jobs: Sequence[Job], settings: Sequence[Setting], busy_counts
) -> list[str]:
    """A markdown table: per job and setting, the median training time quiet and each slowdown ratio."""
    loaded = [b for b in busy_counts if b]
    head = "| job | setting | quiet (s) | " + " | ".join(f"beside {b} busy: s (ratio)" for b in loaded) + " |"
    lines = [head, "|" + "---|" * (3 + len(loaded))]
    for job in jobs:
        for setting in settings:
            quiet = results.median(job.name, setting.name, 0)
            cells = []
            for b in loaded:
                t = results.median(job.name, setting.name, b)
                threads = sorted(set(results.threads(job.name, setting.name, b)) - {0})
                more = ">" if results.timed_out(job.name, setting.name, b) else ""
                cells.append(f"{more}{t:.2f} (**{more}{t / quiet:.2f}x**, threads {threads})")
            quiet_threads = sorted(set(results.threads(job.name, setting.name, 0)) - {0})
            lines.append(
                f"| {job.name} | {setting.name} | {'>' if results.timed_out(job.name, setting.name, 0) else ''}"
                f"{quiet:.2f} (threads {quiet_threads}) | " + " | ".join(cells) + " |"
            )
    return lines


__all__ = [
    "BUSY_LOOPS",
    "Job",
    "LoadResults",
    "Setting",
    "Timing",
    "busy_processes",
    "char_job",
    "clean_env",
    "main_job",
    "run_job",
    "run_load_benchmark",
    "slowdown_lines",
    "standard_settings",
    "torch_default_threads",
]
