"""Shared settings for the DEQ engine tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """The engine tests use tiny tensors: intra-op threads only add synchronisation latency (a batched 6x6
    ``linalg.solve`` takes ~10 ms with 2 threads on a busy 2-core machine, ~0.1 ms with 1), so run them on
    one thread and restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
