"""The training layer and the tasks stay readable: no function over 60 lines (a phase, a helper: each one
screen)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKED = (REPO / "hf_deq" / "training", REPO / "hf_deq" / "tasks")
MAX_LINES = 60


def long_functions(path: Path, max_lines: int = MAX_LINES, root: Path = REPO) -> list[str]:
    """``file:line name (N lines)`` of each function (methods and nested ones too) of ``path`` longer than
    ``max_lines`` lines, decorators and docstring included; ``file`` relative to ``root``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            if length > max_lines:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_60_lines_in_training_and_tasks():
    files = [p for folder in CHECKED for p in sorted(folder.glob("*.py"))]
    assert files
    too_long = [entry for path in files for entry in long_functions(path)]
    assert not too_long, "split these into phases or helpers:\n" + "\n".join(too_long)


def test_the_scan_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = tmp_path / "long.py"
    source.write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n", encoding="utf-8")
    assert long_functions(source, root=tmp_path) == [f"long.py:5 long ({MAX_LINES + 1} lines)"]
