"""What a model card says about a run: the final training loss (not the run's mean), the parameter count
(parameters only, never BatchNorm statistics), user-supplied names shown as themselves (never HTML, links or
headings, in the Markdown or the YAML), and a dataset linked on the Hub only when it is a Hub dataset."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import pytest
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt
from script_loading import load_script
from tiny_runs import mdeq_args, read_log

import hf_deq
from hf_deq import hub
from hf_deq.modeling_utils import count_parameters

STATS = {"solver_nstep_mean": 7.5, "solver_nstep_max": 9, "solver_residual_mean": 2e-4, "source": "given"}


class _Page(HTMLParser):
    """The text and the tags of rendered HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def rendered(card: str) -> _Page:
    """The card's Markdown body rendered as the Hub does (CommonMark with raw HTML, GFM tables)."""
    page = _Page()
    page.feed(MarkdownIt("commonmark").enable("table").render(ModelCard(card).text))
    return page


def test_a_trained_run_card_shows_its_final_loss_and_counts_parameters_only(tmp_path, fresh_accelerate_state):
    """From the saved folder alone (as ``push_to_hub.py`` renders it): the count of the model's parameters, not
    of every tensor in model.safetensors (the BatchNorm statistics of the MDEQ head are buffers)."""
    from safetensors import safe_open

    out, log = tmp_path / "run", tmp_path / "steps.jsonl"
    results = load_script("train_mdeq_classifier").main(
        mdeq_args(out, "--logging_steps", "2", "--log_file", str(log), steps=4)
    )
    losses = [r["loss"] for r in read_log(log) if "step" in r]
    assert results["train_loss_last_window"] == pytest.approx(sum(losses[2:]) / 2, rel=1e-6)
    assert results["train_loss"] == pytest.approx(sum(losses) / 4, rel=1e-6)
    card = hub.render_model_card(out)
    assert (
        f"| final training loss (last logging window of 2 steps) | {results['train_loss_last_window']:.4g} |"
        in card
    )
    assert f"| mean training loss (whole run) | {results['train_loss']:.4g} |" in card

    model = hf_deq.MDEQForImageClassification.from_pretrained(out)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert stored > count_parameters(model) == results["num_parameters"]  # buffers are stored, not counted
    assert f"| parameters | {count_parameters(model):,} (" in card


HOSTILE = [
    "<script>alert(1)</script>",
    "[click me](javascript:alert(1))",
    "cat\n# Hacked heading",
    "a|b",
    "*bold* _it_ ~~gone~~",
    "`code` \\ &amp;",
    "<img src=x onerror=alert(1)>",
    "__init__",
    "hidden_size",
    "plain name",
]  # ten classes, as test_mdeq_tiny has


def test_user_supplied_names_are_shown_as_themselves(tmp_path):
    """Class names, a dataset configuration name and the model folder's name go into the card escaped: no HTML
    element, link or heading comes from them, each shows as its own text (on one line), and the YAML keeps it."""
    config = hf_deq.create_config("test_mdeq_tiny", id2label=dict(enumerate(HOSTILE)))
    folder = tmp_path / "run [x](javascript:y) <b>"
    config.save_pretrained(folder)
    hostile_config = "<img src=y onerror=alert(2)>\n## Injected"
    card = hub.render_model_card(
        folder,
        metrics={"eval_accuracy": 0.5, "dataset_name": "org/data", "dataset_config_name": hostile_config},
        training={"dataset_name": "org/data", "lr_scheduler_type": "[x](javascript:z)"},
        solver_stats=STATS,
    )
    meta = hub.validate_model_card(card)
    assert meta["model-index"][0]["results"][0]["dataset"]["config"] == hostile_config.replace("\n", " ")
    assert meta["model-index"][0]["name"] == folder.name

    page = rendered(card)
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "img", "b", "em", "del"}, tags
    assert [tag for tag, _ in page.tags].count("h1") == 1  # the card's title (the folder's name), no other
    links = [attrs.get("href") for tag, attrs in page.tags if tag == "a"]
    assert links == ["https://huggingface.co/datasets/org/data"]  # the one real Hub dataset link
    text = "".join(page.text)
    for name in [*HOSTILE, hostile_config, folder.name, "[x](javascript:z)"]:
        assert name.replace("\n", " ") in text, name


def local_card(metrics: dict, training: dict) -> tuple[str, dict]:
    card = hub.render_model_card(
        config=hf_deq.create_config("test_mdeq_tiny"), metrics=metrics, training=training, solver_stats=STATS
    )
    return card, hub.validate_model_card(card)


@pytest.mark.parametrize(
    "training",
    [
        {
            "train_dir": "/home/alice/images/flowers",
            "dataset_name": None,
        },  # the training record of --train_dir
        {"dataset_name": "/home/alice/images/flowers"},  # of --dataset_name ./flowers (made absolute)
    ],
)
def test_a_local_image_folder_is_never_presented_as_a_hub_dataset(training):
    card, meta = local_card({"eval_accuracy": 0.5, "dataset_name": "flowers"}, training)
    assert "huggingface.co/datasets" not in card and "datasets" not in meta
    assert "Data: local data, `flowers` (not a Hub dataset)." in card and "/home/alice" not in card


def test_a_relative_local_folder_named_like_a_hub_id_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flowers").mkdir()
    card, meta = local_card({"eval_accuracy": 0.5, "dataset_name": "flowers"}, {"dataset_name": "flowers"})
    assert "huggingface.co/datasets" not in card and "datasets" not in meta


def test_a_bare_name_without_the_runs_recipe_is_not_linked():
    """``all_results.json`` keeps a local folder's base name only: alone, ``flowers`` may be either."""
    card, meta = local_card({"eval_accuracy": 0.5, "dataset_name": "flowers"}, {})
    assert "huggingface.co/datasets" not in card and "datasets" not in meta
    assert "`flowers` (the run did not record whether it is a Hub dataset or a local folder)" in card
    card, meta = local_card({"eval_accuracy": 0.5, "dataset_name": "imdb"}, {"dataset_name": "imdb"})
    assert meta["datasets"] == ["imdb"] and "(https://huggingface.co/datasets/imdb)" in card


def test_the_training_record_tells_the_card_where_the_data_came_from(tmp_path):
    """A model folder with only its training record and results (``push_to_hub.py`` after training)."""
    folder = tmp_path / "model"
    hf_deq.create_config("test_mdeq_tiny").save_pretrained(folder)
    (folder / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "dataset_name": "flowers"}))
    record = {"format_version": 1, "args": {"train_dir": str(tmp_path / "flowers"), "dataset_name": None}}
    (folder / "training_record.json").write_text(json.dumps(record))
    card = hub.render_model_card(folder, solver_stats=STATS)
    assert "Data: local data, `flowers` (not a Hub dataset)." in card and str(tmp_path) not in card


def test_a_valid_repo_id_is_verbatim_in_the_code_snippets():
    card = hub.render_model_card(
        config=hf_deq.create_config("test_mdeq_tiny"), repo_id="alice_/mdeq-_tiny_", solver_stats=STATS
    )
    assert 'from_pretrained("alice_/mdeq-_tiny_", trust_remote_code=True)' in card
    assert "# mdeq-\\_tiny\\_" in card  # the title is Markdown text: escaped
