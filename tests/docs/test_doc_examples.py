"""Every ```python block of README.md and docs/*.md runs (``doc_examples.py``: one namespace per page, in a
temporary folder; ``<!-- docs-test: skip -->`` before a block skips it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_examples import REPO, SKIP_MARKER, code_blocks, doc_pages, python_blocks, run_page

RUNNER = Path(__file__).with_name("doc_examples.py")
PAGES = [str(page.relative_to(REPO)) for page in doc_pages() if python_blocks(page)]
#: blocks that may be skipped, at most: pushes to the real Hub and loading from it
MAX_SKIPPED = 4


@pytest.fixture(scope="module")
def page_results(tmp_path_factory) -> dict[str, str | None]:
    """Run every page once, in one subprocess (one import of torch and transformers for all pages)."""
    output = tmp_path_factory.mktemp("doc_examples") / "results.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(
        [sys.executable, str(RUNNER), *PAGES, "--output", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the example runner itself failed:\n{done.stderr[-3000:]}"
    return json.loads(output.read_text())


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, page_results):
    failure = page_results[page]
    assert failure is None, failure


def test_readme_and_manual_have_examples():
    assert "README.md" in PAGES and "docs/engine.md" in PAGES and "docs/finetuning.md" in PAGES


def test_few_blocks_are_skipped():
    skipped = [
        f"{page.relative_to(REPO)}:{block.line}"
        for page in doc_pages()
        for block in code_blocks(page)
        if block.skip
    ]
    assert len(skipped) <= MAX_SKIPPED, f"blocks marked {SKIP_MARKER!r}: {skipped}"


def test_a_failing_block_is_reported_with_its_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip -->\n```python\nraise SystemExit(3)\n```\n\n"
        "```python\nassert x == 1\ny = undefined_name\n```\n"
    )
    failure = run_page(page)
    assert failure is not None and failure.startswith(f"{page}:13: ")
    assert "NameError" in failure and f'File "{page}", line 14' in failure
