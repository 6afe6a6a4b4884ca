"""The model card, rendered in-process (no Hub): the dataset the run trained on, the one set of result keys both
training scripts write to ``all_results.json``, and an install line that holds for a package not on the index."""

from __future__ import annotations

import pytest

import hf_deq
from hf_deq import hub

STATS = {"solver_nstep_mean": 7.5, "solver_nstep_max": 9, "solver_residual_mean": 2e-4, "source": "given"}


def render(preset: str, metrics: dict, training: dict | None = None) -> tuple[str, dict]:
    card = hub.render_model_card(
        config=hf_deq.create_config(preset), metrics=metrics, training=training or {}, solver_stats=STATS
    )
    return card, hub.validate_model_card(card)


def model_index_dataset(meta: dict) -> dict:
    return meta["model-index"][0]["results"][0]["dataset"]


def test_a_hub_dataset_is_linked_and_listed_in_the_metadata():
    card, meta = render(
        "test_mdeq_tiny",
        {"eval_accuracy": 0.5, "dataset_name": "uoft-cs/cifar10", "dataset_config_name": "plain_text"},
    )
    assert meta["datasets"] == ["uoft-cs/cifar10"]
    assert model_index_dataset(meta) == {
        "name": "uoft-cs/cifar10",
        "type": "uoft-cs/cifar10",
        "config": "plain_text",
        "split": "validation",
    }
    assert (
        "Data: [uoft-cs/cifar10](https://huggingface.co/datasets/uoft-cs/cifar10) (configuration `plain_text`) "
        "from the Hugging Face Hub." in card
    )


def test_a_builtin_dataset_is_named_without_pretending_to_be_a_hub_id():
    card, meta = render(
        "test_mdeq_tiny", {"eval_accuracy": 0.99, "dataset_name": "digits", "eval_num_examples": 360}
    )
    assert "datasets" not in meta
    assert model_index_dataset(meta) == {
        "name": "digits: scikit-learn's 1,797 8x8 handwritten digits (sklearn.datasets.load_digits)",
        "type": "custom",
        "split": "validation",
    }
    assert (
        "Data: `digits`, scikit-learn's 1,797 8x8 handwritten digits (sklearn.datasets.load_digits), loaded"
        in card
        and "not a Hub dataset" in card
    )
    assert "| Accuracy | 0.99 | digits, validation split |" in card and "Evaluated on 360 examples." in card
    assert "huggingface.co/datasets/digits" not in card


@pytest.mark.parametrize(
    "recorded, training, shown, builder",
    [
        ({"dataset_name": "input.txt"}, {}, "input.txt", "text"),
        ({"dataset_name": "/home/alice/corpora/plays.jsonl"}, {}, "plays.jsonl", "json"),
        ({}, {"train_file": "/home/alice/corpora/plays.txt", "dataset_name": None}, "plays.txt", "text"),
        ({"dataset_name": "shakespeare"}, {"train_file": "data/shakespeare"}, "shakespeare", "custom"),
    ],
)
def test_a_local_file_is_shown_by_its_name_only(recorded, training, shown, builder):
    card, meta = render("test_deq_transformer_tiny", {"eval_perplexity": 12.0, **recorded}, training)
    assert "datasets" not in meta
    assert model_index_dataset(meta) == {"name": shown, "type": builder, "split": "validation"}
    assert f"Data: local data, `{shown}` (not a Hub dataset)." in card
    assert "/home/alice" not in card  # no local absolute path in a public card


def test_an_unrecorded_dataset_says_so():
    card, meta = render("test_mdeq_tiny", {"eval_accuracy": 0.5})
    assert "Data: not recorded with the saved model." in card and "datasets" not in meta
    assert model_index_dataset(meta) == {"name": "not recorded", "type": "custom", "split": "validation"}


#: the keys both training scripts write to all_results.json
RESULTS = {
    "train_runtime": 125.0,
    "train_loss": 0.3125,
    "train_loss_last_window": 0.0625,
    "train_steps": 400,
    "train_samples": 1437,
    "epoch": 3.0,
    "eval_loss": 0.0625,
    "eval_num_examples": 360,
    "eval_solver_nstep": 6.25,
    "eval_solver_nstep_max": 8,
    "eval_solver_residual": 3e-4,
    "eval_accuracy": 0.9917,
    "skipped_nonfinite_steps": 2,
    "num_parameters": 12345,
    "grad_estimator": "upg",
    "solver": "anderson",
    "num_processes": 2,
    "torch_num_threads": 4,
    "mixed_precision": "bf16",
    "peak_memory_mb": 1536.0,
    "forward_time_per_step": 0.0125,
    "backward_time_per_step": 0.025,
    "unrolled_warmup_steps": 50,
    "dataset_name": "digits",
    "dataset_config_name": None,
}


def test_the_card_reads_the_result_keys_of_both_training_scripts():
    card = hub.render_model_card(config=hf_deq.create_config("test_mdeq_tiny"), metrics=RESULTS)
    for row in (
        "| wall time (training) | 2 min 05 s (125 s) |",
        "| final training loss (last logging window) | 0.0625 |",
        "| mean training loss (whole run) | 0.3125 |",
        "| optimisation steps | 400 |",
        "| training samples | 1,437 |",
        "| epochs | 3 |",
        "| processes | 2 |",
        "| threads per process | 4 |",
        "| precision | bf16 |",
        "| peak memory | 1,536 MB |",
        "| time per step (forward / backward) | 12.5 ms / 25.0 ms |",
        "| unrolled (backprop) warm-up steps | 50 |",
        "| non-finite steps skipped | 2 |",
        "| gradient estimator (training) | upg |",
        "| parameters | 21,554 (0.02M) |",  # the model's (test_mdeq_tiny), not the run's number
        "| 6.25 | 8 | 3.000e-04 |",
        "| Accuracy | 0.9917 | digits, validation split |",
        "| Loss | 0.0625 | digits, validation split |",
    ):
        assert row in card, row
    assert "the run's evaluation (all_results.json)" in card


def test_other_names_for_the_same_results_are_not_read():
    """One vocabulary: the former LM-script names (``train_runtime_s``, ``perplexity`` ...) are not aliases."""
    card = hub.render_model_card(
        config=hf_deq.create_config("test_deq_transformer_tiny"),
        metrics={
            "train_runtime_s": 60.0,
            "perplexity": 9.0,
            "nonfinite_steps_skipped": 3,
            "solver_nstep": 4.0,
        },
        solver_stats=STATS,
    )
    assert "wall time" not in card and "Perplexity" not in card and "non-finite" not in card
    card = hub.render_model_card(
        config=hf_deq.create_config("test_deq_transformer_tiny"), metrics={"eval_perplexity": 9.0}
    )
    assert "| Perplexity | 9.0 |" in card


def test_the_install_line_installs_from_source(monkeypatch):
    monkeypatch.delenv("HF_DEQ_SOURCE_URL", raising=False)
    for preset in ("test_mdeq_tiny", "test_deq_transformer_tiny"):
        card, _ = render(preset, {})
        assert "pip install hf_deq" not in card
        assert (
            "hf_deq is not on the Python package index: install it from its source (`pip install .` in a "
            "checkout of the hf_deq repository)." in card
        )
    monkeypatch.setenv("HF_DEQ_SOURCE_URL", "https://example.org/alice/hf_deq.git")
    card, _ = render("test_mdeq_tiny", {})
    assert 'install it from its source (`pip install "git+https://example.org/alice/hf_deq.git"`).' in card


def test_the_install_line_uses_the_packages_source_url(monkeypatch):
    """A ``[project.urls] Source`` entry of the installed package becomes ``pip install "git+<url>"``."""
    from email.message import Message
    from importlib import metadata

    monkeypatch.delenv("HF_DEQ_SOURCE_URL", raising=False)
    message = Message()
    message["Name"] = "hf_deq"
    message["Project-URL"] = "Source, https://example.org/team/hf_deq"
    real = metadata.metadata
    monkeypatch.setattr(metadata, "metadata", lambda name: message if name == "hf_deq" else real(name))
    card, _ = render("test_deq_transformer_tiny", {})
    assert '(`pip install "git+https://example.org/team/hf_deq"`)' in card
