"""Shared fixtures of the flow-model tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Batches here are tiny: one thread is as fast, and immune to the ~10x
    # slowdown two spinning OpenMP workers suffer on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
