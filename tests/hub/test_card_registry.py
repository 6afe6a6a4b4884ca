"""What a model card says about a family comes from the family's registered ``CardFacts``: each family package
registers its own, the Hub code names no family, and a new family (registered here, outside hf_deq) gets a card
with its own task, metrics, datasets, probe inputs, citations and template."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_deq
from hf_deq import hub
from hf_deq.models.mdeq import MDEQConfig, MDEQForImageClassification

TOY_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A {{ family.description }}.

{% include "_deq.md.jinja" %}

{% include "_training.md.jinja" %}

{% include "_citations.md.jinja" %}
"""


def test_each_family_package_registers_its_card_facts():
    for model_type, package, pipeline_tag in (
        ("mdeq", "hf_deq.models.mdeq", "image-classification"),
        ("deq_transformer", "hf_deq.models.deq_transformer", "text-generation"),
    ):
        facts = hub.get_card_facts(model_type)
        assert facts.pipeline_tag == pipeline_tag
        assert facts.probe_inputs.__module__ == f"{package}.hub_card"
    assert {"mdeq", "deq_transformer"} <= set(hub.registered_model_types())


def _module_imports(path: Path) -> set[str]:
    """The modules ``path`` imports at module level (relative ones as ``.name``)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.add("." * node.level + (node.module or ""))
    return names


def test_card_facts_are_declared_in_the_model_layer_and_import_nothing_heavy():
    """The families declare their card facts in the model layer (``hf_deq.models.card_facts``), which imports
    nothing heavy; the Hub layer's ``registry`` re-exports them, and ``import hf_deq`` loads none of the publishing
    code (``hf_deq.hub`` loads its names on first use)."""
    root = Path(hub.__file__).parent
    assert _module_imports(root / "__init__.py") <= {"importlib", "typing"}
    assert _module_imports(root / "registry.py") <= {"..models.card_facts", ".errors"}
    assert _module_imports(root / "errors.py") <= {"re", "typing"}
    card_facts = root.parent / "models" / "card_facts.py"
    assert _module_imports(card_facts) <= {"os", "collections.abc", "dataclasses", "typing"}
    script = "import sys, hf_deq; print(sorted(n for n in sys.modules if n.startswith('hf_deq.hub.')))"
    env = {**os.environ, "PYTHONPATH": str(root.parents[1])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _hub_sources() -> list[Path]:
    init = Path(hub.__file__)
    assert init.name == "__init__.py", "hf_deq.hub is a package"
    return sorted(init.parent.glob("*.py"))


def test_the_hub_code_names_no_model_family():
    families = set(hub.registered_model_types()) | {"mdeq", "deq_transformer", "MDEQ", "DEQ-Transformer"}
    for path in _hub_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named = [f for f in families if f in node.value.split() or node.value == f]
                assert not named, f"{path.name}:{node.lineno} names the family {named[0]!r}"
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                assert not any(isinstance(s, ast.Attribute) and s.attr == "model_type" for s in sides), (
                    f"{path.name}:{node.lineno} branches on model_type"
                )


class ToyConfig(MDEQConfig):
    model_type = "toy_deq"


@pytest.fixture
def toy_family(tmp_path):
    (tmp_path / "toy_card.md.jinja").write_text(TOY_TEMPLATE, encoding="utf-8")
    probed = []

    def probe(config, num_samples, generator):
        probed.append(num_samples)
        size = config.image_size
        return {
            "pixel_values": torch.randn(num_samples, config.num_channels, size, size, generator=generator)
        }

    facts = hub.register_card_facts(
        hub.CardFacts(
            model_type=ToyConfig.model_type,
            template="toy_card.md.jinja",
            template_dir=tmp_path,
            pipeline_tag="image-feature-extraction",
            task_name="Toy equilibrium features",
            auto_class="AutoModel",
            description="toy equilibrium model from a plug-in",
            metrics=(hub.CardMetric("eval_top1", "accuracy", "Top-1 accuracy"),),
            probe_inputs=probe,
            builtin_datasets={"toyset": "twelve synthetic squares"},
            citations=(("bai2019deep", "The equilibrium idea"),),
            tags=("toy-deq",),
        )
    )
    yield facts, probed
    hub.unregister_card_facts(ToyConfig.model_type)


def test_a_new_family_registered_outside_hf_deq_gets_its_own_card(toy_family):
    facts, probed = toy_family
    config = ToyConfig(
        num_channels=1,
        image_size=8,
        channels=[8],
        head_channels=[4],
        final_channels=8,
        num_groups=4,
        solver_on_failure="ignore",  # an untrained random model: its solves are not the subject here
    )
    model = MDEQForImageClassification(config)
    card = hub.render_model_card(
        model=model,
        repo_id="me/toy",
        metrics={"eval_top1": 0.5, "eval_accuracy": 0.9, "dataset_name": "toyset", "eval_num_examples": 12},
    )
    meta = hub.validate_model_card(card)
    assert meta["pipeline_tag"] == "image-feature-extraction" and "toy-deq" in meta["tags"]
    ((result,),) = [entry["results"] for entry in meta["model-index"]]
    assert result["task"] == {"type": "image-feature-extraction", "name": "Toy equilibrium features"}
    assert result["metrics"] == [{"type": "accuracy", "value": 0.5, "name": "Top-1 accuracy"}]  # its key only
    assert result["dataset"]["name"] == "toyset: twelve synthetic squares" and "datasets" not in meta
    assert (
        "A toy equilibrium model from a plug-in." in card
        and "Data: `toyset`, twelve synthetic squares, loaded by the training script itself" in card
    )
    assert probed == [8] and "random probe inputs" in card  # solver statistics measured with its probe inputs
    assert "The equilibrium idea:" in card and "@inproceedings{bai2019deep" in card
    assert "geng2021training" not in card and "bai2020multiscale" not in card
    assert hub.probe_inputs(config, num_samples=3)[0]["pixel_values"].shape == (3, 1, 8, 8)


def test_a_family_without_card_facts_is_named_in_the_error():
    config = ToyConfig()
    with pytest.raises(hub.HubPushError, match=r"model_type='toy_deq'.*registered: \[.*'mdeq'"):
        hub.render_model_card(config=config)
    assert hf_deq.create_config("test_mdeq_tiny").model_type in hub.registered_model_types()
