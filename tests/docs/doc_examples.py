"""The code blocks of README.md and docs/*.md, and a runner that executes a page's Python blocks.

A page's ```python blocks run in order in one namespace (one per page), in a fresh temporary working folder,
so a page may define its data in a visible set-up block and later blocks use it. A block that must not run (a
push to the real Hub, a GPU-only call) is preceded by the line ``<!-- docs-test: skip -->`` (an HTML comment,
invisible on the site and on GitHub). Shell blocks (```bash) are not run here; their ``python scripts/X.py``
lines are checked against the scripts' flags (``tests/docs/test_doc_commands.py``).

Run as a script, it executes the pages named on its command line and writes one JSON object to ``--output``:
``{page: null}`` for a page whose blocks all ran, or ``{page: "file:line of the block\\ntraceback"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP_MARKER = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, first code line (1-based, in the page), code, and skip mark."""

    lang: str
    line: int
    code: str
    skip: bool


def doc_pages() -> list[Path]:
    """README.md and every Markdown page of docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match["lang"]:
            i += 1
            continue
        previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(match["indent"]) :])
            i += 1
        blocks.append(Block(match["lang"], start + 1, "\n".join(body) + "\n", previous == SKIP_MARKER))
        i += 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a page that run (not marked skip)."""
    return [block for block in code_blocks(path) if block.lang == "python" and not block.skip]


def run_page(path: Path) -> str | None:
    """Execute a page's Python blocks in order in one namespace, in a fresh temporary folder; ``None`` when
    they all ran, else where the failing block starts and its traceback (line numbers are the page's)."""
    namespace: dict = {"__name__": "__main__"}
    relative = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="hf_deq_docs_") as folder:
        os.chdir(folder)
        try:
            for block in python_blocks(path):
                padded = "\n" * (block.line - 1) + block.code  # tracebacks then show the page's line numbers
                try:
                    exec(compile(padded, str(relative), "exec"), namespace)
                except BaseException:  # noqa: BLE001  (a SystemExit in an example is a failure too)
                    return (
                        f"{relative}:{block.line}: the block starting here failed\n{traceback.format_exc()}"
                    )
        finally:
            os.chdir(cwd)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", help="Markdown pages, relative to the repository root")
    parser.add_argument("--output", required=True, help="JSON file of the results")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(REPO))
    results = {page: run_page(Path(REPO, page)) for page in args.pages}
    Path(args.output).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
