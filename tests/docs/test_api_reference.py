"""The API reference (docs/api.md) lists the public API: every name of ``__all__`` of hf_deq and its
subpackages."""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from doc_examples import REPO
from public_api import NOT_PUBLIC, PUBLIC_MODULES, api_page, public_names

import hf_deq


def test_api_page_is_up_to_date():
    expected = api_page()
    actual = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    diff = "\n".join(
        difflib.unified_diff(
            actual.splitlines(), expected.splitlines(), "docs/api.md", "expected", lineterm=""
        )
    )
    assert actual == expected, f"regenerate with `python tests/helpers/public_api.py > docs/api.md`:\n{diff}"


def test_every_public_name_is_on_the_page():
    page = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    entries = list(public_names())
    listed = {name for module in PUBLIC_MODULES for name in importlib.import_module(module).__all__}
    assert {entry.name for entry in entries} == listed  # a re-export is listed once, under its subpackage
    missing = [
        entry.path
        for entry in entries
        if (f"::: {entry.path}\n" if entry.documented else f"`{entry.path}`") not in page
    ]
    assert not missing, f"public names missing from docs/api.md: {missing}"
    assert "::: hf_deq.deq.core.DEQFixedPoint\n" in page and "::: hf_deq.hub.push.push_model\n" in page


def test_every_subpackage_is_covered():
    exported = {name for module in PUBLIC_MODULES for name in importlib.import_module(module).__all__}
    uncovered = []
    for info in pkgutil.walk_packages(hf_deq.__path__, "hf_deq."):
        if not info.ispkg or info.name in PUBLIC_MODULES or info.name in NOT_PUBLIC:
            continue
        names = set(getattr(importlib.import_module(info.name), "__all__", ()))
        if names - exported:
            uncovered.append(f"{info.name}: {sorted(names - exported)}")
    assert not uncovered, f"subpackages exporting names the API reference does not list: {uncovered}"
