"""``--config FILE`` of the training scripts and the recipes in ``scripts/configs/``: every recipe parses with its
script, the command line overrides it, bad files give one clear ``error:`` line (exit status 2) naming the key and
the value, and the
WikiText-103 recipe runs end to end (scaled down) through the real ``load_dataset`` call, the word tokenizer and
the adaptive embeddings."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from script_loading import load_script
from tiny_runs import small_text_file

CONFIGS = Path(__file__).resolve().parents[2] / "scripts" / "configs"
RECIPES = sorted(CONFIGS.glob("*.json"))


def _script(config: Path):
    return load_script(Path(json.loads(config.read_text())["_script"]).stem)


def test_there_are_recipes_for_both_scripts():
    scripts = {json.loads(p.read_text())["_script"] for p in RECIPES}
    assert scripts == {"train_mdeq_classifier.py", "train_deq_lm.py"}


@pytest.mark.parametrize("config", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_parses_with_its_script(config, tmp_path):
    data = json.loads(config.read_text())
    assert data["_description"] and data["_source"]
    args = _script(config).parse_args(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    for key, value in data.items():
        if not key.startswith("_"):
            expected = str(value) if key == "checkpointing_steps" else value
            assert getattr(args, key) == expected, key
    if "preset" in data:
        import hf_deq

        hf_deq.create_config(data["preset"])  # the named preset exists


def test_the_command_line_overrides_the_config(tmp_path):
    config = CONFIGS / "mdeq-tiny-cifar10-upg.json"
    script = load_script("train_mdeq_classifier")
    args = script.parse_args(
        [
            "--config",
            str(config),
            "--learning_rate",
            "0.5",
            "--grad_estimator",
            "npg",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert (args.learning_rate, args.grad_estimator, args.grad_steps) == (0.5, "npg", 5)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"learnin_rate": 0.1}',
            r"unknown key 'learnin_rate'; the keys are the flags of train_mdeq_classifier\.py",
        ),
        ('{"learning_rate": "fast"}', r"'learning_rate' got 'fast'"),
        ('{"learning_rate": true}', r"'learning_rate' got True"),
        ('{"num_train_epochs": 2.5}', r"'num_train_epochs' must be an integer, got 2\.5"),
        ('{"grad_estimator": "exact"}', r"'grad_estimator' must be one of \[.*'implicit'.*\], got 'exact'"),
        ('{"nesterov": "yes"}', r"'nesterov' is a switch, so it takes true or false, got 'yes'"),
        ('{"augment": "rotate"}', r"'augment' must be one of \['none', 'crop', 'crop_flip'\]"),
        ('{"config_overrides": [1]}', r"'config_overrides' must be a JSON object"),
        (
            '{"_script": "train_deq_lm.py"}',
            r"is a config for train_deq_lm\.py, not for train_mdeq_classifier\.py",
        ),
        ("[1, 2]", r"expected a JSON object of flag values, got list"),
        ('{"optimizer": null}', r"'optimizer' is null \(None\), but --optimizer cannot be unset; .*'adamw'"),
        ('{"seed": null}', r"'seed' is null \(None\), but --seed cannot be unset; .*default 42"),
        ('{"learning_rate": 0.1,}', r"not valid JSON"),
    ],
)
def test_bad_config_files_are_refused_clearly(tmp_path, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_mdeq_classifier").parse_args(["--config", str(path)])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert re.search(message, line), line
    if "JSON object of flag values" not in message and "valid JSON" not in message:
        assert f"--config {path}" in line, line  # the file is named


def test_null_leaves_a_flag_without_a_default_unset(tmp_path):
    """``null`` is an absent flag: right where the flag's default is unset too (the DEQ flags: the preset's)."""
    path = tmp_path / "nulls.json"
    path.write_text('{"max_train_steps": null, "solver_max_iter": null, "config_overrides": null}')
    args = load_script("train_mdeq_classifier").parse_args(
        ["--config", str(path), "--output_dir", str(tmp_path / "out")]
    )
    assert (args.max_train_steps, args.solver_max_iter, args.config_overrides) == (None, None, None)


def test_a_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("train_deq_lm").parse_args(["--config", str(tmp_path / "nowhere.json")])
    assert re.search(r"error: --config .*nowhere\.json: no such file", capsys.readouterr().err)


def test_the_wikitext_recipe_runs_scaled_down(tmp_path, fresh_accelerate_state, monkeypatch):
    """``deq-transformer-wt103-upg.json`` with a tiny adaptive preset and a few steps: the script calls
    ``load_dataset("Salesforce/wikitext", "wikitext-103-v1")`` (answered here by local text in WikiText's layout),
    trains the word tokenizer, and trains and evaluates the adaptive model."""
    import datasets

    lines = [line + "\n" for line in small_text_file(tmp_path).read_text().splitlines()]
    calls = []

    def fake_load_dataset(name, config_name=None, **kwargs):
        calls.append((name, config_name))
        split = len(lines) * 4 // 5
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict({"text": lines[:split]}),
                "validation": datasets.Dataset.from_dict({"text": lines[split:]}),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "run"
    results = load_script("train_deq_lm").main(
        [
            "--config", str(CONFIGS / "deq-transformer-wt103-upg.json"),
            "--preset", "test_deq_transformer_tiny_adaptive",
            "--block_size", "16",
            "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8",
            "--max_eval_samples", "16",
            "--max_train_steps", "2",
            "--num_warmup_steps", "0",
            "--eval_steps", "2",
            "--checkpointing_steps", "100",
            "--mixed_precision", "no",
            "--solver_on_failure", "ignore",
            "--torch_num_threads", "1",
            "--output_dir", str(out),
        ]
    )  # fmt: skip
    assert calls == [("Salesforce/wikitext", "wikitext-103-v1")]
    assert results["train_steps"] == 2 and math.isfinite(results["eval_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["adaptive_cutoffs"] == [10, 30, 60] and config["grad_estimator"] == "upg"
    assert config["grad_damping"] == 0.8 and config["solver_max_iter"] == 30
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert config["vocab_size"] == len(vocab) > 60
    assert list(vocab)[:4] == ["<unk>", "<pad>", "<|endoftext|>", "\n"]  # then words by frequency


def test_an_adaptive_preset_with_too_small_a_vocabulary_says_what_to_pass(
    tmp_path, fresh_accelerate_state, capsys
):
    text = small_text_file(tmp_path)
    script = load_script("train_deq_lm")
    common = [
        "--train_file",
        str(text),
        "--preset",
        "test_deq_transformer_tiny_adaptive",
        "--block_size",
        "16",
    ]
    common += ["--max_train_steps", "1", "--max_eval_samples", "8", "--torch_num_threads", "1"]
    common += ["--solver_on_failure", "ignore"]
    small_vocabulary = ["--train_tokenizer", "word", "--tokenizer_vocab_size", "40"]
    with pytest.raises(SystemExit) as exit_info:
        script.main([*common, *small_vocabulary, "--output_dir", str(tmp_path / "refused")])
    assert exit_info.value.code == 2
    assert re.search(
        r"error: argument --preset: .*adaptive_cutoffs=\[10, 30, 60\].*the tokenizer has 40\..*null",
        capsys.readouterr().err,
    )
    plain = ["--config_overrides", '{"adaptive_cutoffs": null}', "--output_dir", str(tmp_path / "plain")]
    assert script.main([*common, *small_vocabulary, *plain])["train_steps"] == 1
