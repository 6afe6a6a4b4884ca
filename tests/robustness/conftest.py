"""Shared set-up of the robustness tests (issue 6): hypothesis settings. Helpers live in
``robustness_helpers.py``; the one-thread and fresh-Accelerate-state fixtures in ``tests/conftest.py``."""

from __future__ import annotations

import tempfile

from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Nothing is written into the repository: no example database, and hypothesis's own cache (``.hypothesis/``)
# goes to a temporary folder. Failures print their example.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hf_deq_hypothesis_"))
settings.register_profile("hf_deq_robustness", database=None, deadline=None, print_blob=True)
settings.load_profile("hf_deq_robustness")
