"""A classifier's labels come from the data: the given labels replace a preset's (``create_config``, the
image-classification task), a ``num_labels`` that contradicts ``id2label`` is refused, and a saved model still
takes a new ``num_labels`` at load time."""

from __future__ import annotations

import pytest

import hf_deq
from hf_deq import DEQConfigError, MDEQForImageClassification
from hf_deq.tasks import get_task
from hf_deq.tasks.image_classification import build_classifier
from hf_deq.training import training_parser

NAMES = ["cat", "dog", "eel", "fox"]


def test_a_folders_labels_replace_the_presets_in_the_image_classification_task():
    parser = training_parser(get_task("image-classification"))
    (args,) = parser.parse_into_dataclasses(["--preset", "test_mdeq_tiny", "--train_dir", "unused"])
    model, _ = build_classifier(args, NAMES)
    assert model.config.num_labels == 4 and model.classifier.out_features == 4
    assert model.config.id2label == dict(enumerate(NAMES))
    assert model.config.label2id == {n: i for i, n in enumerate(NAMES)}


def test_create_config_takes_the_given_labels_over_the_presets():
    config = hf_deq.create_config("mdeq-small-imagenet", id2label={0: "no", 1: "yes"})
    assert config.num_labels == 2 and config.id2label == {0: "no", 1: "yes"}
    digits = hf_deq.create_config("mdeq-tiny-digits", num_labels=3)  # a preset with named labels
    assert digits.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert hf_deq.create_config("test_mdeq_tiny").num_labels == 10  # no labels given: the preset's


def test_a_num_labels_contradicting_id2label_is_refused():
    with pytest.raises(DEQConfigError, match=r"num_labels=10 .*expected 2, the number of labels in id2label"):
        hf_deq.create_config("test_mdeq_tiny", num_labels=10, id2label={0: "no", 1: "yes"})
    config = hf_deq.create_config("test_mdeq_tiny", num_labels=2, id2label={0: "no", 1: "yes"})
    assert config.id2label == {0: "no", 1: "yes"}


def test_a_saved_classifier_takes_new_labels_at_load_time(tmp_path):
    hf_deq.create_model("mdeq-tiny-digits").save_pretrained(tmp_path)
    saved = MDEQForImageClassification.from_pretrained(tmp_path)
    assert saved.config.id2label == {i: str(i) for i in range(10)}
    same = MDEQForImageClassification.from_pretrained(tmp_path, num_labels=10)  # the saved count: names kept
    assert same.config.id2label == saved.config.id2label
    new = MDEQForImageClassification.from_pretrained(tmp_path, num_labels=4, ignore_mismatched_sizes=True)
    assert new.config.num_labels == 4 and new.classifier.out_features == 4
    named = MDEQForImageClassification.from_pretrained(
        tmp_path, id2label=dict(enumerate(NAMES)), ignore_mismatched_sizes=True
    )
    assert named.config.id2label == dict(enumerate(NAMES)) and named.classifier.out_features == 4
