"""``model.push_to_hub`` of an hf_deq model goes through ``hf_deq.hub.push_model`` (model card + remote code);
options that only transformers' own upload has fall back to it. The uploads themselves are checked against the
fake Hub in ``test_hub.py``; here the dispatch is (no network)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedModel

import hf_deq
from hf_deq import hub


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(
        hub, "push_model", lambda model, repo_id, **kw: seen.append(("hf_deq", repo_id, kw)) or "url"
    )
    monkeypatch.setattr(
        PreTrainedModel,
        "push_to_hub",
        lambda self, repo_id, **kw: seen.append(("transformers", repo_id, kw)) or "u",
    )
    return seen


def test_push_to_hub_uses_hf_deq_hub(calls):
    model = hf_deq.create_model("test_mdeq_tiny")
    processor = hf_deq.MDEQImageProcessor.from_model_config(model.config)
    assert (
        model.push_to_hub("me/mdeq", private=True, commit_message="first", processing_class=processor)
        == "url"
    )
    ((path, repo_id, kwargs),) = calls
    assert (path, repo_id) == ("hf_deq", "me/mdeq")
    assert kwargs == {
        "processing_class": processor,
        "private": True,
        "commit_message": "first",
        "token": None,
    }


@pytest.mark.parametrize(
    "option", [{"create_pr": True}, {"revision": "dev"}, {"tags": ["x"]}, {"max_shard_size": "1GB"}]
)
def test_transformers_only_options_use_transformers_upload(calls, option):
    model = hf_deq.create_model("test_deq_transformer_tiny")
    model.push_to_hub("me/lm", **option)
    ((path, repo_id, kwargs),) = calls
    assert (path, repo_id) == ("transformers", "me/lm")
    assert all(kwargs[k] == v for k, v in option.items())
