"""The manual builds: ``mkdocs build --strict`` (a broken link or anchor, or an API reference entry naming
something that does not exist, fails it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from doc_examples import REPO

DOC_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_doc_packages() -> list[str]:
    missing = []
    for name in DOC_PACKAGES:
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            missing.append(name)
    return missing


@pytest.mark.skipif(
    bool(_missing_doc_packages()),
    reason=f"the documentation packages are not installed ({', '.join(_missing_doc_packages())}); "
    "pip install -e '.[dev]' brings mkdocs-material and mkdocstrings[python]",
)
def test_mkdocs_build_strict(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env["NO_MKDOCS_2_WARNING"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="hf_deq.deq.core.DEQFixedPoint"' in api and 'id="hf_deq.hub.push.push_model"' in api
