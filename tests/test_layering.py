"""Dependencies go one way: engine (``hf_deq.deq``) <- models <- (hub, training). Checked on the sources (every
import, also those inside functions) and by importing with the upper layers or optional packages missing."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_deq"

#: the model layer: the families and what every hf_deq model shares
MODEL_LAYER = ("hf_deq.models", "hf_deq.modeling_deq", "hf_deq.modeling_outputs", "hf_deq.modeling_utils")
MODEL_LAYER += ("hf_deq.configuration_deq", "hf_deq.variants")
UPPER_LAYERS = ("hf_deq.hub", "hf_deq.training", "hf_deq.tasks")
FAMILIES = ("hf_deq.models.mdeq", "hf_deq.models.deq_transformer")
HUGGING_FACE = ("transformers", "huggingface_hub", "accelerate", "datasets", "evaluate", "tokenizers")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (also by ``importlib.import_module("name")``), relative
    imports resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from . import hub` imports a module
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))  # importlib.import_module("hf_deq.hub")
    return found


def _modules_under(*prefixes: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: _imports(path)
        for name, path in sorted(modules.items())
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    }


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(modules: dict[str, set[str]], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{m} imports {i}" for m, imports in modules.items() for i in sorted(imports) if _within(i, forbidden)
    ]


def test_the_engine_imports_only_itself_and_torch():
    engine = _modules_under("hf_deq.deq")
    assert len(engine) > 10
    outside = [
        f"{m} imports {i}"
        for m, imports in engine.items()
        for i in sorted(imports)
        if i.startswith("hf_deq") and not _within(i, ("hf_deq.deq",))
    ]
    assert not outside, outside
    assert not _violations(engine, HUGGING_FACE)


def test_the_model_layer_never_imports_hub_training_or_benchmarks():
    models = _modules_under(*MODEL_LAYER)
    assert {"hf_deq.modeling_deq", "hf_deq.models.mdeq.modeling_mdeq"} <= set(models)
    assert not _violations(models, (*UPPER_LAYERS, "hf_deq.benchmarks", "benchmarks"))


def test_the_hub_never_imports_training_and_training_knows_no_family():
    assert not _violations(_modules_under("hf_deq.hub"), ("hf_deq.training", "hf_deq.tasks"))
    assert not _violations(_modules_under("hf_deq.training"), FAMILIES)


def test_registration_is_an_explicit_idempotent_call():
    """No layer imports the top-level ``hf_deq`` package to trigger registration; ``register_models()`` registers
    (again, harmlessly) what ``import hf_deq`` registered."""
    below_the_top = [
        p for p in PACKAGE.rglob("*.py") if _within(_module_name(p), ("hf_deq.deq", *MODEL_LAYER))
    ]
    below_the_top += sorted((PACKAGE / "hub").glob("*.py"))
    bare = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in below_the_top
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import) and any(alias.name == "hf_deq" for alias in node.names)
    ]
    assert not bare, f"`import hf_deq` (for its side effects) at {bare}; call register_models()"
    from transformers import AutoConfig

    from hf_deq.models import register_models
    from hf_deq.models.card_facts import register_card_facts, registered_card_facts, unregister_card_facts

    facts = registered_card_facts("mdeq")
    unregister_card_facts("mdeq")
    try:
        register_models()
        register_models()
        assert registered_card_facts("mdeq") is facts
        assert type(AutoConfig.for_model("mdeq")).__name__ == "MDEQConfig"
    finally:
        register_card_facts(facts)


def test_nothing_in_the_package_imports_the_benchmarks():
    assert not _violations(_modules_under("hf_deq"), ("benchmarks", "hf_deq.benchmarks"))
    assert not (PACKAGE / "benchmarks").exists(), "benchmarks live in the top-level benchmarks/ package"


REFUSING = textwrap.dedent(
    """
    import sys

    for name in {refused!r}:
        sys.modules[name] = None  # what an uninstalled (or refused) module looks like to import and find_spec
    """
)

ENGINE_ALONE = """
import hf_deq.deq
from hf_deq.deq import DEQFixedPoint
assert DEQFixedPoint is not None
print(sorted(m for m, v in sys.modules.items() if v and m.startswith("hf_deq.") and not m.startswith("hf_deq.deq")))
"""

LEAN_INSTALL = """
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageClassification

import hf_deq

lm = hf_deq.create_model("test_deq_transformer_tiny").eval()
ids = torch.randint(0, lm.config.vocab_size, (1, 6))
mdeq = hf_deq.create_model("test_mdeq_tiny").eval()
size = mdeq.config.image_size
pixels = torch.randn(1, mdeq.config.num_channels, size, size)
for model, auto, inputs in ((lm, AutoModelForCausalLM, {{"input_ids": ids}}),
                            (mdeq, AutoModelForImageClassification, {{"pixel_values": pixels}})):
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        model.save_pretrained(folder)
        loaded = auto.from_pretrained(folder).eval()
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
from hf_deq import hub  # what push_to_hub uploads: the card and the remote-code bundle

assert hub.render_model_card(model=mdeq).startswith("---")
assert hub.build_remote_code_bundle(lm.config).files
print(sorted(m for m, v in sys.modules.items() if v and m.split(".")[0] in {refused!r}))
"""


def _run(script: str, refused: set[str]) -> str:
    source = REFUSING.format(refused=sorted(refused)) + script.format(refused=sorted(refused))
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_engine_imports_with_the_upper_layers_missing():
    refused = {*UPPER_LAYERS, "hf_deq.models", "transformers", "benchmarks"}
    assert _run(ENGINE_ALONE, refused) == "[]"


@pytest.mark.parametrize("refused", [{"accelerate", "datasets", "evaluate"}])
def test_models_run_save_and_load_without_the_training_extra(refused):
    """``pip install hf_deq`` (no ``[train]`` extra): the package, the models, ``from_pretrained`` and what
    ``push_to_hub`` uploads work. (Refused through ``sys.modules``, not a raising finder: transformers probes
    optional packages with ``importlib.util.find_spec``, which must answer "not installed", not raise.)"""
    assert _run(LEAN_INSTALL, refused) == "[]"
