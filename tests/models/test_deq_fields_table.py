"""The DEQ field table is the one declaration of the DEQ fields: no module of hf_deq but ``deq_fields.py`` lists
their names by hand, and docs/design.md shows the table as it is."""

from __future__ import annotations

import ast
from pathlib import Path

from hf_deq.deq_fields import DEQ_FIELD_NAMES, markdown_table

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hf_deq"
TABLE_MODULE = PACKAGE / "deq_fields.py"
#: a hand list: a tuple, list or set literal of at least this many strings, all of them DEQ field names
HAND_LIST_SIZE = 3


def hand_lists(source: str) -> list[tuple[int, list[str]]]:
    """``(line, names)`` of every tuple/list/set literal of ``source`` holding only DEQ field names, at least
    ``HAND_LIST_SIZE`` of them. A dict from field names to values (a preset, a per-call keyword's engine
    argument) is data about some fields, not a list of them, and is not counted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            continue
        items = node.elts
        names = [
            item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)
        ]
        if len(names) == len(items) >= HAND_LIST_SIZE and set(names) <= set(DEQ_FIELD_NAMES):
            found.append((node.lineno, names))
    return found


def test_the_scan_finds_a_hand_list():
    assert hand_lists('FIELDS = ("solver", "solver_tol", "grad_steps")\nOTHER = ("solver", "x", "y")\n') == [
        (1, ["solver", "solver_tol", "grad_steps"])
    ]


def test_no_module_lists_deq_field_names_by_hand():
    offenders = {
        str(path.relative_to(ROOT)): lists
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != TABLE_MODULE and (lists := hand_lists(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"derive these from hf_deq.deq_fields.DEQ_FIELDS: {offenders}"


def test_design_doc_shows_the_current_table():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert markdown_table() in design, (
        "docs/design.md's field table is out of date: paste the output of "
        "`python -c 'from hf_deq.deq_fields import markdown_table; print(markdown_table())'`"
    )


def test_the_table_has_one_row_per_field():
    rows = [line for line in markdown_table().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(DEQ_FIELD_NAMES)
