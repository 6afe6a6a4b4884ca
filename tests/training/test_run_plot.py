"""The run's picture, ``training_curves.png``: written at the end of training, drawn by ``scripts/plot_run.py``
from any run folder (finished, a checkpoint, an older run without ``log_history.json``), skipped with one line
without matplotlib, pushed with the model and linked from its card."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from script_loading import load_script
from tiny_runs import mdeq_args

from hf_deq.hub import render_model_card
from hf_deq.hub.push import stage_model_dir
from hf_deq.training.run_plot import plot_run, read_run, write_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LINK = "](training_curves.png)"


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """A tiny MDEQ run probed every 2 steps, evaluated at steps 2 and 4."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    out = tmp_path_factory.mktemp("probed") / "run"
    extra = ("--probe_steps", "2", "--logging_steps", "1", "--eval_steps", "2", "--checkpointing_steps", "2")
    load_script("train_mdeq_classifier").main(mdeq_args(out, *extra))
    return out


def _png_size(path) -> tuple[int, int]:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def test_the_loop_writes_the_picture_at_the_end(probed_run):
    width, height = _png_size(probed_run / "training_curves.png")
    assert width >= 800 and height >= 800  # 3 rows of panels: loss, metric, steps, residual, alignment
    history, log_history = read_run(probed_run)
    assert [e["step"] for e in history] == [2, 4] and [e["step"] for e in log_history] == [1, 2, 3, 4]


def test_plot_run_draws_a_run_folder_a_checkpoint_and_an_older_run(probed_run, tmp_path, capsys):
    script = load_script("plot_run")
    run = tmp_path / "run"
    shutil.copytree(probed_run, run)
    (run / "training_curves.png").unlink()
    assert script.main(["--run_dir", str(run)]) == run / "training_curves.png"
    _png_size(run / "training_curves.png")

    checkpoint_png = tmp_path / "step_2.png"  # a checkpoint: its trainer_state.json
    script.main(["--run_dir", str(run / "step_2"), "--output", str(checkpoint_png)])
    _png_size(checkpoint_png)

    (run / "log_history.json").unlink()  # a run saved before log_history.json: the evaluations only
    assert read_run(run)[1] == []
    script.main(["--run_dir", str(run), "--output", str(tmp_path / "older.png")])
    _png_size(tmp_path / "older.png")


@pytest.mark.parametrize(
    ("make", "args", "fragment"),
    [
        (lambda d: None, ["--run_dir", "{d}/missing"], "argument --run_dir: {d}/missing is not a folder"),
        (lambda d: None, ["--run_dir", "{d}"], "holds no training run: no history.json"),
        (lambda d: (d / "history.json").write_text("{}"), ["--run_dir", "{d}"], "expected a list of objects"),
        (
            lambda d: (d / "training_curves.png").write_bytes(b"mine"),
            ["--run_dir", "{d}"],
            "training_curves.png already exists; pass --overwrite",
        ),
    ],
)
def test_plot_run_errors_are_one_line(make, args, fragment, tmp_path, capsys):
    make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script("plot_run").main([a.format(d=tmp_path) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and fragment.format(d=tmp_path) in lines[0] and "Traceback" not in err, err
    if (tmp_path / "training_curves.png").exists():
        assert (tmp_path / "training_curves.png").read_bytes() == b"mine"  # never overwritten unasked


def test_without_matplotlib_the_picture_is_skipped_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    lines = []
    history = [{"step": 2, "eval_loss": 1.0, "eval_accuracy": 0.5}]
    assert write_training_curves(tmp_path, history, [], log=lines.append) is None
    assert len(lines) == 1 and "matplotlib is not installed" in lines[0]
    assert not (tmp_path / "training_curves.png").exists()
    with pytest.raises(ImportError):
        plot_run_dir = tmp_path / "run"
        plot_run_dir.mkdir()
        (plot_run_dir / "history.json").write_text(json.dumps(history))
        plot_run(plot_run_dir)


def test_the_card_links_the_picture_and_the_push_stages_it(probed_run, tmp_path):
    assert LINK in render_model_card(probed_run)
    staged = stage_model_dir(probed_run, tmp_path / "staged")
    assert "training_curves.png" in staged
    assert LINK in (tmp_path / "staged" / "README.md").read_text()
    bare = tmp_path / "bare"
    shutil.copytree(probed_run, bare, ignore=shutil.ignore_patterns("training_curves.png", "step_*"))
    assert LINK not in render_model_card(bare)
