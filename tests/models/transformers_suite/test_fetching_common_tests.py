"""How transformers' common model tests are fetched: extracted once from the sdist into the cache with our stand-ins,
reused afterwards, and a clear skip (nothing half-written) when the package index cannot be reached."""

from __future__ import annotations

import io
import tarfile

import pytest
import transformers_suite


def _fake_sdist(path):
    """A stand-in sdist holding the two modules (and the relative imports the real ones make)."""
    files = {
        "tests/test_modeling_common.py": (
            "from .exporters.test_export import ExportTesterMixin\n"
            "from .generation.test_utils import GenerationTesterMixin\n\n\n"
            "class ModelTesterMixin(ExportTesterMixin):\n    pass\n"
        ),
        "tests/test_configuration_common.py": "from .utils.test_configuration_utils import config_common_kwargs\n",
        "tests/test_other.py": "raise RuntimeError('not extracted')\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"transformers-0.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_extracts_the_two_modules_with_stand_ins_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DEQ_TEST_CACHE", str(tmp_path / "cache"))
    calls = []

    def download(dest):
        calls.append(dest)
        return _fake_sdist(dest / "transformers-0.0.tar.gz")

    monkeypatch.setattr(transformers_suite, "_download_sdist", download)
    root = transformers_suite.fetch()
    package = root / transformers_suite.PACKAGE
    assert root == transformers_suite.cache_root() and root.is_relative_to(tmp_path / "cache")
    names = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py"))
    assert names == sorted([*transformers_suite.FETCHED, *transformers_suite.STAND_INS])
    for path in package.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")  # the stand-ins are valid Python
    assert not [p for p in root.iterdir() if p.name != transformers_suite.PACKAGE]  # no staging left behind
    assert transformers_suite.fetch() == root and len(calls) == 1  # cached: no second download


def test_an_unreachable_index_skips_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DEQ_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(
        pytest.skip.Exception, match=r"could not be fetched: `pip download transformers==.*failed"
    ):
        transformers_suite.common_testers()
    assert not list((tmp_path / "cache").rglob("*.py"))  # nothing half-written
