"""scripts/bad_input_table.py: the battery's record becomes the table of docs/bad_input.md."""

from __future__ import annotations

import json

import pytest
from script_loading import load_script


def _attempt(name, value, outcome, known="", entry="E"):
    return {"entry": entry, "name": name, "kind": "nan", "value": value, "outcome": outcome, "detail": "why",
            "known": known}  # fmt: skip


ATTEMPTS = [
    _attempt("a", "1", "refused"),
    _attempt("a", "1", "refused"),  # drawn twice: counted once
    _attempt("a", "2", "handled"),
    _attempt("b", "3", "failed", known="fixed on branch guard: x"),
    _attempt("b", "4", "failed", known="not fixed (new, reported): y"),
    _attempt("c", "5", "refused", entry="F"),
]


def test_table_counts_each_distinct_attempt_once_by_entry_point():
    table = load_script("bad_input_table")
    text = table.render(ATTEMPTS, "the command")
    assert "| E | 2 | 4 | 1 | 1 | 1 | 1 |" in text
    assert "| F | 1 | 1 | 1 | 0 | 0 | 0 |" in text
    assert "| **all** | **3** | **5** | **2** | **1** | **1** | **1** |" in text
    assert "| b | nan | E | 4 | why | not fixed (new, reported): y |" in text
    assert "`the command`" in text


def test_table_from_a_record_file(tmp_path, capsys):
    table = load_script("bad_input_table")
    record = tmp_path / "record.json"
    record.write_text(json.dumps(ATTEMPTS))
    out = tmp_path / "table.md"
    assert table.main(["--from_json", str(record), "--output", str(out)]) == 0
    assert "| E | 2 | 4 |" in out.read_text()
    with pytest.raises(SystemExit) as exit_info:
        table.main(["--from_json", str(tmp_path / "missing.json"), "--output", str(out)])
    assert exit_info.value.code == 2
    assert "argument --from_json: no such file" in capsys.readouterr().err


def test_a_record_without_failures_says_so():
    table = load_script("bad_input_table")
    text = table.render([a for a in ATTEMPTS if a["outcome"] != "failed"], "the command")
    assert "| **all** | **2** | **3** | **2** | **1** | **0** | **0** |" in text
    assert "None: every input tried was refused clearly or handled correctly." in text
    assert "| input | value classes |" not in text
