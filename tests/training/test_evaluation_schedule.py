"""When the loop evaluates: with ``--eval_steps`` every N steps and at the end, not also at each epoch's end (which
falls anywhere between two of them: the char recipe evaluated six times instead of four, about half its wall
time); without it every ``--eval_every_epochs`` epochs (default 1); both when both are given, never twice at one
step. Each evaluation advances a progress bar of its own."""

from __future__ import annotations

import pytest
from script_loading import load_script
from tiny_runs import mdeq_args

from hf_deq.training.evaluation import epoch_evaluation_due
from hf_deq.training.tracking import RunTracker


def _steps_evaluated(tmp_path, *extra: str, steps: int = 10) -> list[int]:
    # 48 training images in batches of 12: 4 optimizer steps per epoch
    results = load_script("train_mdeq_classifier").main(mdeq_args(tmp_path / "out", *extra, steps=steps))
    return [entry["step"] for entry in results["history"]]


def test_eval_steps_replace_the_per_epoch_evaluations(tmp_path, fresh_accelerate_state):
    assert _steps_evaluated(tmp_path / "a", "--eval_steps", "5") == [5, 10]
    # what --eval_steps alone did before (and does with --eval_every_epochs 1): an epoch-end evaluation right
    # before each --eval_steps one
    assert _steps_evaluated(tmp_path / "b", "--eval_steps", "5", "--eval_every_epochs", "1") == [4, 5, 8, 10]


def test_per_epoch_evaluations_without_eval_steps_and_both_when_asked(tmp_path, fresh_accelerate_state):
    assert _steps_evaluated(tmp_path / "a") == [4, 8, 10]
    both = _steps_evaluated(tmp_path / "b", "--eval_steps", "4", "--eval_every_epochs", "1")
    assert both == [4, 8, 10]  # steps 4 and 8 are both an --eval_steps step and an epoch end: evaluated once
    assert _steps_evaluated(tmp_path / "c", "--eval_steps", "3", "--eval_every_epochs", "2") == [
        3,
        6,
        8,
        9,
        10,
    ]


@pytest.mark.parametrize(
    ("epoch", "last", "every_epochs", "eval_steps", "due"),
    [
        (0, False, None, None, True),  # the default: every epoch
        (0, False, None, 500, False),  # --eval_steps alone: not at epoch ends
        (2, True, None, 500, True),  # ... but always after the last epoch
        (0, False, 2, None, False),
        (1, False, 2, 500, True),  # both given: both schedules
    ],
)
def test_epoch_evaluation_due(epoch, last, every_epochs, eval_steps, due):
    assert epoch_evaluation_due(epoch, last, every_epochs, eval_steps) is due


def test_an_evaluation_advances_its_own_progress_bar(fresh_accelerate_state):
    from types import SimpleNamespace

    from accelerate import Accelerator

    args = SimpleNamespace(with_tracking=False, disable_tqdm=False, log_file=None)
    tracker = RunTracker(Accelerator(cpu=True), args, "p", total=10, initial=0)
    with tracker.evaluation_progress(3) as advance:
        bars = [b for b in type(tracker.progress)._instances if b is not tracker.progress]
        assert len(bars) == 1 and bars[0].total == 3 and bars[0].desc == "eval"
        for _ in range(3):
            advance()
        assert bars[0].n == 3
    assert bars[0].disable  # closed when the evaluation ends
    tracker.progress.close()
