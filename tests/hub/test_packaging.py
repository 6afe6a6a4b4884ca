"""The wheel carries everything a user of a plain ``pip install`` needs: every subpackage and the model-card
templates (top-level ``model_cards/``, shipped as ``hf_deq/model_cards/``), and no more: not the benchmarks (their
own project, ``benchmarks/pyproject.toml``), and none of the training extra's packages among its requirements."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools

from hf_deq import hub

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[2]


def test_the_listed_packages_are_the_subpackages_on_disk():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = set(setuptools.find_packages(str(REPO), include=["hf_deq*"]))
    assert listed == on_disk | {"hf_deq.model_cards"}, (
        f"pyproject.toml [tool.setuptools] packages is out of date: missing {sorted(on_disk - listed)}"
    )


def test_template_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DEQ_MODEL_CARDS", raising=False)
    assert hub.find_template_dir() == REPO / "model_cards"  # source checkout / editable install
    monkeypatch.setenv("HF_DEQ_MODEL_CARDS", str(tmp_path))
    with pytest.raises(hub.HubPushError, match="model-card templates not found in .*HF_DEQ_MODEL_CARDS"):
        hub.find_template_dir()
    assert hub.find_template_dir(REPO / "model_cards") == REPO / "model_cards"


@pytest.mark.slow
def test_a_wheel_install_renders_model_cards(tmp_path):
    dist, site, source = tmp_path / "dist", tmp_path / "site", tmp_path / "source"
    # Build from a copy of what the wheel is made of, so setuptools' build/ never lands in the checkout.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hf_deq", "model_cards", "benchmarks"):  # benchmarks/ beside it, as in the checkout
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True
    )
    (wheel,) = dist.glob("hf_deq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (REPO / "model_cards").glob("*.jinja")}
    assert templates and {f"hf_deq/model_cards/{t}" for t in templates} <= names
    assert "hf_deq/metrics/accuracy.py" in names  # the evaluate metric script, package data
    assert not [n for n in names if n.startswith(("benchmarks/", "hf_deq/benchmarks/"))]
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base = {
        r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].strip().lower()
        for r in requires
        if ";" not in r
    }
    assert {"torch", "transformers", "huggingface_hub", "safetensors"} <= base
    assert not base & {"accelerate", "datasets", "evaluate", "pillow", "scikit-learn"}, base
    train = [r for r in requires if 'extra == "train"' in r]
    assert {r.split(">")[0] for r in train} >= {"accelerate", "datasets", "evaluate"}, train
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True
    )

    probe = (
        "import hf_deq, hf_deq.hub as hub; "
        "print(hf_deq.__file__); print(hub.find_template_dir()); "
        "print(hub.render_model_card(config=hf_deq.create_config('test_mdeq_tiny'))[:3])"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("HF_DEQ_MODEL_CARDS", None)
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    package_file, folder, card_start = out.stdout.splitlines()[:3]
    assert Path(package_file).is_relative_to(site), "the installed wheel, not the checkout, must be imported"
    assert Path(folder) == site / "hf_deq" / "model_cards"
    assert card_start == "---"
