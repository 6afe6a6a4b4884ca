"""Test session set-up. Runs before any test module imports a Hugging Face library: nothing is fetched from
the network, and caches live in a temporary HF_HOME."""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Shared test helpers (tiny models and runs, the model tester mixin, script loading) live in tests/helpers.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_deq_test_home_"))

# Nothing is written into the repository: no hypothesis example database, and its cache (``.hypothesis/``) goes to
# a temporary folder. Failures print their example.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hf_deq_hypothesis_"))
settings.register_profile("hf_deq", database=None, deadline=None, print_blob=True)
# The bad-input battery (tests/battery): "ci" is quick and draws the same values every run, "long"
# (HYPOTHESIS_PROFILE=long) draws many more, at random; the deadline catches an input that hangs.
settings.register_profile(
    "ci", settings.get_profile("hf_deq"), max_examples=2, deadline=timedelta(seconds=30), derandomize=True
)
settings.register_profile(
    "long", settings.get_profile("hf_deq"), max_examples=60, deadline=timedelta(seconds=30)
)
settings.load_profile("hf_deq")

TINYSHAKESPEARE = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare", "input.txt"
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs on one intra-op thread: tiny models run much faster so, above all on a CPU shared with
    other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_accelerate_state():
    """In-process script runs create an ``Accelerator``; its state is a process-wide singleton."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
