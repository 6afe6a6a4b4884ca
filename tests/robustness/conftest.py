"""Shared set-up of the robustness tests (issue 6): hypothesis settings and a fresh
Accelerate state around in-process script runs. Helpers live in ``robustness_helpers.py``."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Nothing is written into the repository: no example database, and hypothesis's own cache (``.hypothesis/``)
# goes to a temporary folder. Failures print their example.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hf_deq_hypothesis_"))
settings.register_profile("hf_deq_robustness", database=None, deadline=None, print_blob=True)
settings.load_profile("hf_deq_robustness")


@pytest.fixture
def fresh_accelerate_state():
    """In-process script runs create an ``Accelerator``; its state is a process-wide singleton."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
