"""Functions and the script that take a local model directory say at once when it does not exist or cannot be
published (no Hub lookup, no retries), and ``scripts/push_to_hub.py`` answers bad input with one ``error:`` line
and exit status 2, never a traceback."""

from __future__ import annotations

import pytest
import transformers
from script_loading import load_script

import hf_deq
from hf_deq import hub


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to resolve a model on the Hub or to upload fails the test."""

    def touched(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", touched)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", touched)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", touched)


def test_a_missing_folder_is_reported_at_once(tmp_path, no_hub):
    missing = tmp_path / "runs" / "mdeq-digits"
    with pytest.raises(hub.ModelDirError, match=r"model directory .*runs/mdeq-digits does not exist"):
        hub.render_model_card(missing)
    with pytest.raises(hub.ModelDirError, match="does not exist"):
        hub.push_model_dir(missing, "user/mdeq-digits")
    with pytest.raises(hub.ModelDirError, match="does not exist"):
        hub.stage_model_dir(missing, tmp_path / "staged")
    assert not (tmp_path / "staged").exists()


def test_an_unusable_folder_is_reported_at_once(tmp_path, no_hub):
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.ModelDirError, match="no readable config.json"):
        hub.render_model_card(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(hub.ModelDirError, match="a file, not a folder"):
        hub.push_model_dir(tmp_path / "file", "user/x")
    hf_deq.create_config("test_mdeq_tiny").save_pretrained(tmp_path / "config_only")
    with pytest.raises(hub.ModelDirError, match="no .safetensors weights"):
        hub.push_model_dir(tmp_path / "config_only", "user/x")


@pytest.fixture
def push_script():
    return load_script("push_to_hub")


def run_script(script, capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = script.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def error_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if "error:" in line]
    return line


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "--model_dir {path}: the folder does not exist"),
        ("file", "--model_dir {path}: a file, not a folder"),
        ("empty", "--model_dir: {path} holds no readable config.json"),
        ("bad_repo", "--repo_id: invalid Hub repo id 'not a repo'"),
        ("stage_not_empty", "--stage_only {stage}: exists and is not an empty folder"),
    ],
)
def test_push_script_answers_bad_input_with_one_error_line(
    tmp_path, capsys, push_script, no_hub, case, needle
):
    path, stage, repo = tmp_path / "model", tmp_path / "stage", "user/x"
    if case == "file":
        path.write_text("x")
    elif case in ("empty", "bad_repo", "stage_not_empty"):
        path.mkdir()
    if case == "bad_repo":
        hf_deq.create_model("test_mdeq_tiny").save_pretrained(path)
        repo = "not a repo"
    argv = ["--model_dir", str(path), "--repo_id", repo]
    if case == "stage_not_empty":
        stage.mkdir()
        (stage / "keep.txt").write_text("mine")
        argv += ["--stage_only", str(stage)]
    code, err = run_script(push_script, capsys, *argv)
    assert code == 2
    assert needle.format(path=path, stage=stage) in error_line(err)


def test_push_script_reports_a_failed_push_on_one_line(tmp_path, capsys, push_script, monkeypatch):
    model = hf_deq.create_model("test_mdeq_tiny")
    model.config.solver_on_failure = "ignore"
    model.save_pretrained(tmp_path / "model")

    def refused(*args, **kwargs):
        raise hub.HubPushError("uploading failed (HTTP 401): log in\nThe trained model is saved in model")

    monkeypatch.setattr(hub, "push_model_dir", refused)
    code, err = run_script(push_script, capsys, "--model_dir", str(tmp_path / "model"), "--repo_id", "user/x")
    assert code == 1
    assert error_line(err) == "error: uploading failed (HTTP 401): log in The trained model is saved in model"


def test_every_push_script_flag_has_help(push_script):
    actions = [a for a in push_script.build_parser()._actions if a.dest != "help"]
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]


def test_a_malformed_hub_model_id_is_refused_naming_the_repo_id():
    from types import SimpleNamespace

    args = hub.HubArguments(push_to_hub=True, hub_model_id="a/b/c")
    with pytest.raises(hub.InvalidRepoIdError, match="invalid Hub repo id"):
        hub.check_hub_args(SimpleNamespace(**vars(args), output_dir=None))
    hub.check_hub_args(SimpleNamespace(**vars(hub.HubArguments(True, "alice/mdeq")), output_dir=None))
    hub.check_hub_args(SimpleNamespace(**vars(hub.HubArguments()), output_dir="runs/x"))  # no push: no check


def test_a_value_is_a_local_folder_or_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert hub.missing_local_model_dir("user/mdeq-digits") is None  # a Hub id: transformers resolves it
    assert hub.missing_local_model_dir("mdeq-digits") is None
    for local in ("runs/mdeq-digits", "./mdeq-digits", "/no/such/folder", "a/b/c", "~/no-such-model-folder"):
        assert "does not exist (a local path, not a Hub id)" in hub.missing_local_model_dir(local), local
    (tmp_path / "runs" / "file").write_text("x")
    assert "a file, not a model folder" in hub.missing_local_model_dir("runs/file")
    (tmp_path / "runs" / "empty").mkdir()
    assert "holds no config.json" in hub.missing_local_model_dir("runs/empty")
    hf_deq.create_config("test_mdeq_tiny").save_pretrained(tmp_path / "runs" / "saved")
    assert hub.missing_local_model_dir("runs/saved") is None


@pytest.mark.parametrize(
    "script, argv",
    [
        ("evaluate_deq", []),
        ("train_mdeq_classifier", []),
        ("train_deq_lm", ["--train_file", "{text}"]),
        ("finetune_with_trainer", ["--output_dir", "{tmp}/out"]),
        ("benchmark_generation", []),
    ],
)
def test_every_script_says_at_once_that_a_model_folder_is_missing(tmp_path, capsys, no_hub, script, argv):
    """``--model_name_or_path runs/x`` where ``runs/x`` is missing: one ``error:`` line, no Hub lookup."""
    text = tmp_path / "text.txt"
    text.write_text("hello world\n" * 50)
    missing = tmp_path / "runs" / "mdeq-digits"
    argv = [a.format(text=text, tmp=tmp_path) for a in argv] + ["--model_name_or_path", str(missing)]
    code, err = run_script(load_script(script), capsys, *argv)
    assert code == 2
    assert f"--model_name_or_path: the folder {missing} does not exist" in error_line(err)


PICKLED_SHARD = "pytorch_model-00002-of-00002.bin"


def index_to_pickle(tmp_path):
    """A saved model folder whose ``model.safetensors.index.json`` maps half the weights to a safetensors shard
    and the other half to a ``.bin`` pickle."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "indexed"
    hf_deq.create_model("test_mdeq_tiny", solver_on_failure="ignore").save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    safe, pickled = names[: len(names) // 2], names[len(names) // 2 :]
    save_file({k: weights[k] for k in safe}, folder / "model-00001-of-00002.safetensors", {"format": "pt"})
    torch.save({k: weights[k] for k in pickled}, folder / PICKLED_SHARD)
    weight_map = {
        **dict.fromkeys(safe, "model-00001-of-00002.safetensors"),
        **dict.fromkeys(pickled, PICKLED_SHARD),
    }
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder


def test_a_safetensors_index_that_maps_to_a_pickle_is_refused_by_every_load(tmp_path, capsys):
    """ "safetensors only" holds for every file a load reads, not only for the file it starts from."""
    folder = index_to_pickle(tmp_path)
    expected = f"model.safetensors.index.json: {PICKLED_SHARD}"
    for loader in (transformers.AutoModelForImageClassification, hf_deq.MDEQForImageClassification):
        with pytest.raises(OSError, match="safetensors weights only") as err:
            loader.from_pretrained(folder)
        assert expected in str(err.value)
    assert expected in hub.missing_local_model_dir(str(folder))
    with pytest.raises(hub.ModelDirError, match="safetensors weights only"):
        hub.push_model_dir(folder, "user/x")
    with pytest.raises(hub.ModelDirError, match="safetensors weights only"):
        hub.stage_model_dir(folder, tmp_path / "staged")
    code, err = run_script(load_script("evaluate_deq"), capsys, "--model_name_or_path", str(folder))
    assert code == 2 and expected in error_line(err)


def test_a_hub_repo_whose_index_maps_to_a_pickle_is_refused_before_loading(tmp_path, monkeypatch):
    """A Hub id: the index ``from_pretrained`` would follow is fetched and checked first (the repo's files are
    served here from a local folder)."""
    folder = index_to_pickle(tmp_path)
    fetched = []

    def cached_file(repo_id, filename, **kwargs):
        fetched.append((repo_id, filename))
        return str(folder / filename) if (folder / filename).is_file() else None

    monkeypatch.setattr(transformers.utils, "cached_file", cached_file)
    with pytest.raises(OSError, match=f"alice/indexed's safetensors index maps weights .*{PICKLED_SHARD}"):
        hf_deq.MDEQForImageClassification.from_pretrained("alice/indexed")
    assert fetched == [
        ("alice/indexed", "model.safetensors"),
        ("alice/indexed", "model.safetensors.index.json"),
    ]
