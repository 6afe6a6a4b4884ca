"""The battery writes its record (every attempt and its outcome) as JSON when ``BATTERY_RESULTS`` names a file;
``scripts/bad_input_table.py`` turns it into docs/bad_input.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("BATTERY_RESULTS")
    if not target:
        return
    from battery_probe import results_as_dicts

    Path(target).write_text(json.dumps(results_as_dicts(), indent=0, ensure_ascii=False))
