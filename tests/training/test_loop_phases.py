"""The loop's phases one at a time: the ``Run`` that ``set_up`` builds, an epoch run by hand, the hooks a run
calls (with their step), and the meters (``TrainingClock``, ``RunningMeans``)."""

from __future__ import annotations

import math
from pathlib import Path

from script_loading import load_script
from tiny_runs import mdeq_args, tiny_model

from hf_deq.training.hooks import HubPushHook, TrainingHook
from hf_deq.training.meters import RunningMeans, TrainingClock


def test_running_means_are_weighted_and_reset():
    means = RunningMeans()
    means.add("loss", 1.0)
    means.add("loss", 4.0, weight=2.0)
    means.add("nstep", 5.0)
    assert means.means() == {"loss": 3.0, "nstep": 5.0}
    assert means.mean("loss") == 3.0 and means.count("loss") == 3.0
    assert means.mean("residual") == 0.0 and math.isnan(means.mean("residual", math.nan))
    means.reset()
    assert means.means() == {} and means.count("loss") == 0.0


class FakeTime:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_counts_laps_not_pauses_and_items_per_second():
    wall, cpu = FakeTime(), FakeTime()
    clock = TrainingClock(wall_time=10.0, cpu_time=1.0, wall_clock=wall, cpu_clock=cpu)
    wall.now += 2.0
    cpu.now += 0.5
    assert clock.lap() == (12.0, 1.5)
    clock.add_items(64)
    with clock.paused():  # an evaluation: not training time
        wall.now += 30.0
        cpu.now += 30.0
    wall.now += 2.0
    assert clock.lap() == (14.0, 1.5)
    clock.add_items(64)
    assert clock.items_per_second == 32.0  # 128 items in the 4 s of this process's laps
    assert TrainingClock().items_per_second == 0.0


def test_the_task_says_whether_its_model_is_a_deq():
    from benchmarks.against_explicit import ExplicitImageClassificationTask
    from benchmarks.explicit_models import ExplicitCNNConfig, ExplicitCNNForImageClassification
    from hf_deq.tasks import CausalLMTask, ImageClassificationTask

    cnn = ExplicitCNNForImageClassification(ExplicitCNNConfig(widths=[8], blocks_per_stage=1, num_labels=3))
    assert ImageClassificationTask().model_is_deq(tiny_model("mdeq"))
    assert CausalLMTask().model_is_deq(tiny_model("lm"))
    assert not ExplicitImageClassificationTask().model_is_deq(cnn)  # a DEQ task's subclass, an explicit model


def _set_up(tmp_path: Path, *extra: str):
    from hf_deq.training.accelerator import build_accelerator
    from hf_deq.training.loop import set_up

    script = load_script("train_mdeq_classifier")
    args = script.parse_args(mdeq_args(tmp_path / "out", *extra))
    return set_up(script.TASK, args, build_accelerator(args))


def test_set_up_builds_the_run_and_an_epoch_runs_by_hand(tmp_path, fresh_accelerate_state):
    from hf_deq.training.loop import run_epoch

    run = _set_up(tmp_path, "--logging_steps", "2")
    # 48 training images in batches of 12: 4 optimizer steps, one epoch
    assert (run.updates_per_epoch, run.max_train_steps, run.num_epochs) == (4, 4, 1)
    assert run.is_deq and run.grad_estimator == run.unwrapped.config.grad_estimator and run.solver
    assert run.state.completed_steps == 0 and run.state.history == [] and run.probe is None
    assert run.hooks == () and run.last_evaluation == {} and run.last_window_loss is None
    run.model.train()
    run.clock.start()
    run_epoch(run, 0)
    assert run.state.completed_steps == 4 and (run.state.epoch, run.state.batches_in_epoch) == (1, 0)
    assert [e["step"] for e in run.state.log_history] == [2, 4]
    assert [e["step"] for e in run.state.history] == [4]  # the last epoch's evaluation
    assert run.last_evaluation["step"] == 4 and "eval_accuracy" in run.last_evaluation
    assert run.state.train_time == run.clock.wall_time > 0 and run.clock.items == 48
    assert run.window.means() == {}  # the last window was logged and reset
    assert run.last_window_loss == run.state.log_history[-1]["train_loss"]


class RecordingHook(TrainingHook):
    """Records what the loop calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_checkpoint(self, run, path, step):
        self.calls.append(("checkpoint", Path(path).name, step, run.state.completed_steps))

    def on_end(self, run, output_dir, results):
        self.calls.append(("end", Path(output_dir).name, results["train_steps"]))


def test_hooks_see_each_checkpoint_with_its_step_and_the_end(tmp_path, fresh_accelerate_state):
    from hf_deq.training import train

    script = load_script("train_mdeq_classifier")
    args = script.parse_args(mdeq_args(tmp_path / "out", "--checkpointing_steps", "2"))
    hook, quiet = RecordingHook(), TrainingHook()
    results = train(script.TASK, args, hooks=[hook, quiet])
    assert hook.calls == [("checkpoint", "step_2", 2, 2), ("checkpoint", "step_4", 4, 4), ("end", "out", 4)]
    assert results["train_steps"] == 4 and (tmp_path / "out" / "step_2").is_dir()


def test_the_hub_push_hook_pushes_checkpoints_and_the_end(monkeypatch):
    import hf_deq.hub.cli as hub_cli

    pushed = []
    monkeypatch.setattr(hub_cli, "push_from_args", lambda *a, **k: pushed.append((a, k)))

    class FakeRun:
        accelerator = type("Main", (), {"is_main_process": True})()
        args, unwrapped, processing_class = "ARGS", "MODEL", "PROCESSOR"

    hook = HubPushHook()
    hook.on_checkpoint(FakeRun(), Path("out/step_2"), 2)
    hook.on_end(FakeRun(), "out", {"train_steps": 2})
    assert pushed == [
        (("ARGS",), {"model": "MODEL", "processing_class": "PROCESSOR", "step": 2}),
        (("ARGS", "out"), {"model": "MODEL", "processing_class": "PROCESSOR", "metrics": {"train_steps": 2}}),
    ]
    FakeRun.accelerator = type("Other", (), {"is_main_process": False})()
    hook.on_end(FakeRun(), "out", {})
    assert len(pushed) == 2  # the main process only
