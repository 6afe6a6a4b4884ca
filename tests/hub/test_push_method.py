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


def test_push_goes_through_the_publisher_the_hub_layer_registered(calls):
    """The model layer owns the hook (``set_publisher``) and never imports ``hf_deq.hub``; ``import hf_deq``
    registers the Hub's publisher into it. With none registered (a model loaded as remote code, without hf_deq),
    ``push_to_hub`` is transformers' plain upload."""
    from hf_deq import modeling_deq

    model = hf_deq.create_model("test_deq_transformer_tiny")
    try:
        modeling_deq.set_publisher(None)
        assert model.push_to_hub("me/plain", private=True) == "u"
        seen = []
        modeling_deq.set_publisher(lambda model, repo_id, **kw: seen.append(repo_id) or "mine")
        assert model.push_to_hub("me/mine") == "mine" and seen == ["me/mine"]
        with pytest.raises(TypeError, match="set_publisher takes a callable"):
            modeling_deq.set_publisher("hub")
    finally:
        hub.register_publisher()
    assert [path for path, _, _ in calls] == ["transformers"]
    assert model.push_to_hub("me/lm") == "url"  # registered again: hf_deq's card and remote code
