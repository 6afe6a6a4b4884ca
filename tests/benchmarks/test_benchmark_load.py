"""``scripts/benchmark_load.py``: its busy processes are started and stopped, a job slice runs under a thread
setting and reports its times, the slowdown table divides by the quiet run, bad flags are one ``error:`` line."""

from __future__ import annotations

import pytest
from script_loading import load_script

from benchmarks.load import SCRIPTS as BENCH_SCRIPTS
from benchmarks.load import (
    Job,
    LoadResults,
    Setting,
    Timing,
    busy_processes,
    char_job,
    main_job,
    run_job,
    slowdown_lines,
)


def test_busy_processes_run_and_are_stopped():
    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)  # still running
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(ValueError, match="busy process kind 'gpu'"):
        with busy_processes(1, "gpu"):
            pass


@pytest.mark.slow
def test_a_job_slice_beside_a_busy_process(tmp_path):
    tiny = Job(
        "tiny",
        (
            str(BENCH_SCRIPTS / "train_mdeq_classifier.py"),
            *("--preset", "test_mdeq_tiny", "--max_train_samples", "24", "--max_eval_samples", "12"),
            *("--max_train_steps", "2", "--per_device_train_batch_size", "12", "--disable_tqdm"),
        ),
    )
    with busy_processes(1):
        timing = run_job(tiny, Setting("single", ("--torch_num_threads", "1")), busy=1, repeat=0)
    assert timing.busy == 1 and timing.torch_num_threads == 1
    assert timing.train_runtime > 0 and timing.process_wall > timing.train_runtime


def test_a_run_past_the_time_limit_is_stopped_and_marked():
    sleeper = Job("sleeper", ("-c", "import time; time.sleep(60)"))
    timing = run_job(sleeper, Setting("library"), busy=0, repeat=0, timeout=1.0)
    assert timing.timed_out and timing.train_runtime == 1.0
    results = LoadResults(timings=[Timing("sleeper", "library", 0, 0, 2.0, 2.0, 3.0, 1, 0.0), timing])
    timing.busy = 1
    assert ">0.50x" in slowdown_lines(results, [sleeper], [Setting("library")], (0, 1))[2]


def test_slowdown_table():
    jobs = [Job("j", ())]
    settings = [Setting("library"), Setting("old")]
    results = LoadResults()
    for setting, times in (("library", (2.0, 3.0, 5.0)), ("old", (1.0, 4.0, 12.0))):
        for busy, t in zip((0, 1, 3), times):
            results.timings.append(Timing("j", setting, busy, 0, t, t, t + 5, 1, 0.0))
    lines = slowdown_lines(results, jobs, settings, (0, 1, 3))
    assert "**1.50x**" in lines[2] and "**2.50x**" in lines[2]  # library: 3/2, 5/2
    assert "**4.00x**" in lines[3] and "**12.00x**" in lines[3]


def test_the_jobs_are_the_readme_main_job_and_the_char_recipe(tmp_path):
    assert main_job(60).argv[0].endswith("train_mdeq_classifier.py") and "60" in main_job(60).argv
    char = char_job(tmp_path / "input.txt", 30).argv
    assert char[0].endswith("train_deq_lm.py") and char[char.index("--config") + 1].endswith(
        "deq-transformer-char-upg.json"
    )


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--jobs", "main,gpu"], "--jobs"),
        (["--jobs", "main", "--busy", "1,3"], "--busy"),
        (["--jobs", "main", "--busy", "x"], "--busy"),
        (["--jobs", "main", "--settings", "fast"], "--settings"),
        (["--jobs", "main", "--repeats", "0"], "--repeats"),
        (["--jobs", "char"], "--train_file"),
    ],
)
def test_bad_flags_are_one_error_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("benchmark_load").parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: argument {flag}" in err[-1] and all("Traceback" not in line for line in err)
