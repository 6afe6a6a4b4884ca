"""Every script answers a bad flag value or recipe the way argparse answers a bad choice: one ``error:`` line
naming the flag, exit status 2, before any data is loaded (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from script_loading import load_script
from tiny_runs import REPO, SCRIPTS, script_env

import hf_deq.tasks  # noqa: F401  (imported before _no_data patches the loaders: the tasks keep the real ones)

CONFIGS = SCRIPTS / "configs"
LM_RECIPE = str(CONFIGS / "deq-transformer-char-upg.json")
MDEQ_RECIPE = str(CONFIGS / "mdeq-tiny-cifar10-upg.json")

CASES = [
    ("train_mdeq_classifier", ["--solver_max_iter", "-1"], "--solver_max_iter", "solver_max_iter=-1"),
    ("train_mdeq_classifier", ["--preset", "mdeq-foo"], "--preset", "unknown preset 'mdeq-foo'"),
    (
        "train_mdeq_classifier",
        ["--preset", "deq-transformer-char"],
        "--preset",
        "is a deq_transformer preset",
    ),
    ("train_mdeq_classifier", ["--config", LM_RECIPE], "--config", "is a config for train_deq_lm.py"),
    (
        "train_mdeq_classifier",
        ["--config_overrides", '{"solver_max_iter": 0}'],
        "--config_overrides",
        "solver_max_iter=0",
    ),
    ("train_mdeq_classifier", ["--config_overrides", "[1]"], "--config_overrides", "expected a JSON object"),
    ("train_mdeq_classifier", ["--solver_kwargs", '{"memry": 3}'], "--solver_kwargs", "memry"),
    ("train_mdeq_classifier", ["--checkpointing_steps", "often"], "--checkpointing_steps", "'often'"),
    ("train_mdeq_classifier", ["--resume_from_checkpoint", "latest"], "--output_dir", "need it"),
    ("train_mdeq_classifier", ["--learning_rate", "0"], "--learning_rate", "must be > 0"),
    ("train_deq_lm", ["--grad_damping", "2"], "--grad_damping", "grad_damping=2.0"),
    ("train_deq_lm", ["--preset", "mdeq-tiny-digits"], "--preset", "is a mdeq preset"),
    ("train_deq_lm", ["--config", MDEQ_RECIPE], "--config", "is a config for train_mdeq_classifier.py"),
    ("train_deq_lm", ["--block_size", "1"], "--block_size", "at least 2"),
    ("train_deq_lm", ["--block_size", str(10**12)], "--block_size", "at most 1048576, got 1000000000000"),
    ("train_deq_lm", ["--validation_split_percentage", "nan"], "--validation_split_percentage", "got nan"),
    ("train_deq_lm", ["--validation_split_percentage", "100"], "--validation_split_percentage", "got 100.0"),
    (
        "train_deq_lm",
        ["--output_dir", "out", "--resume_from_checkpoint", ""],
        "--resume_from_checkpoint",
        "'' is empty; expected a checkpoint folder or 'latest'",
    ),
    (
        "train_deq_lm",
        ["--tokenizer_name", "./no_tokenizer"],
        "--tokenizer_name",
        "./no_tokenizer: no such folder",
    ),
    ("train_deq_lm", ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size", ">= 1"),
    (
        "compare_estimators",
        ["--output_dir", "unused", "--", "--solver_max_iter", "-1"],
        "--solver_max_iter",
        "solver_max_iter=-1",
    ),
    (
        "finetune_with_trainer",
        ["--output_dir", "unused", "--solver_max_iter", "-1"],
        "--solver_max_iter",
        "-1",
    ),
    ("benchmark_generation", ["--solver_tol", "-1"], "--solver_tol", "solver_tol=-1.0"),
    ("benchmark_generation", ["--new_tokens", "0"], "--new_tokens", ">= 1"),
    ("benchmark_adaptive_head", ["--preset", "deq-transformer-char"], "--preset", "no adaptive_cutoffs"),
    ("gpu_check", ["--estimators", "upg,exact"], "--estimators", "'exact'"),
    ("gpu_check", ["--lm_preset", "mdeq-tiny-digits"], "--lm_preset", "not a deq_transformer preset"),
]


def _no_data(monkeypatch, *scripts: str) -> None:
    """Loading any data fails the test: the errors must come first. The ``scripts`` are loaded first (a script
    first loaded while patched would keep ``refuse`` for every later test); every module that imported a loader
    by name gets the patch too, undone with the rest."""
    for script in scripts:
        load_script(script)

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    import datasets

    import hf_deq.data.images as images
    import hf_deq.data.text as text

    loaders = [(images, "load_image_datasets"), (text, "load_text_datasets"), (datasets, "load_dataset")]
    for owner, name in loaders:
        original = getattr(owner, name)
        for module in list(sys.modules.values()):
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, refuse)


def _one_error_line(err: str, flag: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert f"error: argument {flag}:" in lines[0] or f"error: {flag} " in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("script", "argv", "flag", "fragment"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_a_bad_value_is_one_error_line_naming_its_flag(
    script, argv, flag, fragment, tmp_path, monkeypatch, capsys
):
    _no_data(monkeypatch, script)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, flag, fragment)


def test_evaluate_deq_checks_the_family_flags_before_loading_data(tmp_path, monkeypatch, capsys):
    import hf_deq

    model_dir = tmp_path / "model"
    hf_deq.create_config("test_mdeq_tiny").save_pretrained(model_dir)
    _no_data(monkeypatch, "evaluate_deq")
    with pytest.raises(SystemExit) as exit_info:
        load_script("evaluate_deq").main(
            ["--model_name_or_path", str(model_dir), "--", "--solver_max_iter", "0"]
        )
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, "--solver_max_iter", "solver_max_iter=0")


def test_a_bad_recipe_value_names_the_key(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"_script": "train_deq_lm.py", "solver_max_iter": -3}))
    _no_data(monkeypatch, "train_deq_lm")
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_deq_lm").main(["--config", str(recipe)])
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, "--solver_max_iter", "solver_max_iter=-3")


def test_as_a_process_the_script_prints_usage_and_one_error_line(tmp_path):
    """The real command: two short lines on stderr (usage, error), exit status 2, nothing else."""
    cmd = [sys.executable, str(SCRIPTS / "train_mdeq_classifier.py"), "--solver_max_iter", "-1"]
    proc = subprocess.run(cmd, env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: train_mdeq_classifier.py"), proc.stderr
    assert lines[1].startswith("train_mdeq_classifier.py: error: argument --solver_max_iter:"), lines[1]
    assert not Path(tmp_path, "outputs").exists()


# -- data inputs, found while loading (before training) ---------------------------------------------------------
def _text(tmp_path: Path, name: str, content: bytes | None) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    return str(path)


def _images(tmp_path: Path, *names: str) -> str:
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / name)
    return str(root)


LM = ["--preset", "test_deq_transformer_tiny", "--max_train_steps", "1", "--torch_num_threads", "1"]
MDEQ = ["--preset", "test_mdeq_tiny", "--max_train_steps", "1", "--torch_num_threads", "1"]
DATA_CASES = [
    ("train_deq_lm", lambda t: ["--train_file", _text(t, "no.txt", None)], "--train_file", "no such file"),
    ("train_deq_lm", lambda t: ["--train_file", str(t)], "--train_file", "is a folder"),
    ("train_deq_lm", lambda t: ["--train_file", _text(t, "e.txt", b"")], "--train_file", "is empty"),
    ("train_deq_lm", lambda t: ["--train_file", _text(t, "b.bin", b"\x7fELF\x00")], "--train_file", "binary"),
    (
        "train_deq_lm",
        lambda t: ["--train_file", _text(t, "l.txt", "na\u00efve\n".encode("latin-1"))],
        "--train_file",
        "not UTF-8 text (byte 0xef at byte offset 2)",
    ),
    (
        "train_deq_lm",
        lambda t: ["--train_file", _text(t, "one.txt", b"one line, no more")],
        "--train_file",
        "too little text for a train/validation split",
    ),
    (
        "train_deq_lm",
        lambda t: ["--train_file", _text(t, "two.txt", b"a\nb\n"), "--block_size", "64"],
        "--block_size",
        "too little text for one block of 64 tokens",
    ),
    (
        "train_deq_lm",
        lambda t: ["--text_column_name", "content"],
        "--text_column_name",
        "its columns: ['text']",
    ),
    ("train_deq_lm", lambda t: ["--tokenizer_name", str(t)], "--tokenizer_name", "cannot load a tokenizer"),
    (
        "train_deq_lm",
        lambda t: ["--train_tokenizer", "word", "--tokenizer_vocab_size", "3"],
        "--tokenizer_vocab_size",
        "a word vocabulary needs more than 3 tokens",
    ),
    ("train_mdeq_classifier", lambda t: ["--train_dir", str(t / "none")], "--train_dir", "no such folder"),
    ("train_mdeq_classifier", lambda t: ["--train_dir", _images(t)], "--train_dir", "is empty"),
    (
        "train_mdeq_classifier",
        lambda t: ["--train_dir", _images(t, "cat/a.png", "cat/b.png")],
        "--train_dir",
        "1 label(s) (['cat'])",
    ),
    (
        "train_mdeq_classifier",
        lambda t: ["--label_column_name", "class"],
        "--label_column_name",
        "its columns: ['image', 'label']",
    ),
    ("train_mdeq_classifier", lambda t: ["--report_to", "tensorbord"], "--report_to", "'tensorboard'"),
    ("train_mdeq_classifier", lambda t: [], "--output_dir", "required"),
]


@pytest.mark.parametrize(
    ("script", "make_argv", "flag", "fragment"), DATA_CASES, ids=[f"{c[0]}-{c[3]}" for c in DATA_CASES]
)
def test_a_bad_data_input_is_one_error_line_before_training(
    script, make_argv, flag, fragment, tmp_path, monkeypatch, capsys, fresh_accelerate_state
):
    import hf_deq.training.loop as loop

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "GuardedStep", no_training)
    monkeypatch.chdir(tmp_path)
    common = LM if script == "train_deq_lm" else MDEQ
    argv = [*common, *make_argv(tmp_path)]
    if flag != "--output_dir":
        argv += ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, flag, fragment)
    assert not (tmp_path / "out" / "config.json").exists()


FINETUNE_CASES = [
    (["--grad_estimator", "upgg"], "--grad_estimator", "did you mean 'upg'?"),
    (["--solver", "andersen"], "--solver", "did you mean 'anderson'?"),
    (["--preset", "deq-transformer-char"], "--preset", "this script trains mdeq models"),
    (["--model_name_or_path", "LM"], "--model_name_or_path", "holds a deq_transformer model"),
    (["--model_name_or_path", "MDEQ", "--solver_max_iter", "0"], "--solver_max_iter", "solver_max_iter=0"),
]


@pytest.mark.parametrize(("argv", "flag", "fragment"), FINETUNE_CASES, ids=[c[2] for c in FINETUNE_CASES])
def test_the_trainer_script_refuses_a_misspelled_name_or_another_family(
    argv, flag, fragment, tmp_path, monkeypatch, capsys
):
    import hf_deq

    hf_deq.create_config("test_deq_transformer_tiny").save_pretrained(tmp_path / "LM")
    hf_deq.create_config("test_mdeq_tiny").save_pretrained(tmp_path / "MDEQ")
    _no_data(monkeypatch, "finetune_with_trainer")
    argv = [str(tmp_path / a) if a in ("LM", "MDEQ") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        load_script("finetune_with_trainer").main([*argv, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    _one_error_line(err, flag, fragment)
    assert len(err.strip().splitlines()) == 2, err  # usage and the error, not transformers' 130-line usage


def test_a_failed_final_push_is_a_short_error_with_the_saved_model_and_the_retry(
    tmp_path, monkeypatch, capsys, fresh_accelerate_state
):
    import hf_deq.hub.cli as hub_cli
    from hf_deq.hub.errors import HubPushError

    def unreachable(*args, **kwargs):
        raise HubPushError(
            "creating the Hub repo 'someone/tiny' failed: could not reach the Hub (ConnectError)"
        )

    monkeypatch.setattr(hub_cli, "push_model_dir", unreachable)
    out = tmp_path / "out"
    argv = [*MDEQ, "--max_train_samples", "16", "--max_eval_samples", "8", "--disable_tqdm"]
    argv += ["--output_dir", str(out), "--push_to_hub", "--hub_model_id", "someone/tiny"]
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_mdeq_classifier").main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-2].startswith(
        "train_mdeq_classifier.py: error: argument --push_to_hub: creating the Hub repo"
    )
    assert lines[-1] == (
        f"The trained model is saved in {out}; retry with: python scripts/push_to_hub.py --model_dir {out} "
        "--repo_id someone/tiny"
    )
    assert (out / "model.safetensors").is_file()


@pytest.mark.skipif(
    not Path("/proc/self/cmdline").exists(), reason="reads the launcher's command line in /proc"
)
def test_accelerate_launch_asked_for_processes_it_did_not_start_is_refused(tmp_path, monkeypatch, capsys):
    """``accelerate launch --cpu --num_processes 2`` starts the script once: the script sees the request in its
    launcher's command line and refuses, naming the spelling that starts two processes on CPU."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "launch", "--cpu", "--num_processes", "2"]
    )
    try:
        cmdline = Path(f"/proc/{launcher.pid}/cmdline")
        while b"launch" not in cmdline.read_bytes():  # until the launcher runs its own command line
            time.sleep(0.01)
        monkeypatch.setattr("os.getppid", lambda: launcher.pid)
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # what accelerate launch sets
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        _no_data(monkeypatch, "train_deq_lm")
        with pytest.raises(SystemExit) as exit_info:
            load_script("train_deq_lm").main([*LM, "--output_dir", str(tmp_path / "out")])
    finally:
        launcher.kill()
        launcher.wait()
    assert exit_info.value.code == 2
    _one_error_line(
        capsys.readouterr().err,
        "accelerate",
        "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 train_deq_lm.py",
    )


def test_report_to_none_means_no_tracking_as_in_transformers(tmp_path):
    argv = ["--output_dir", str(tmp_path / "out"), "--with_tracking", "--report_to", "none"]
    assert load_script("train_mdeq_classifier").parse_args(argv).with_tracking is False
