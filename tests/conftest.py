"""Test set-up: tests import `helpers` from this folder; nothing may reach a hub."""
import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def one_thread():
    """One intra-op torch thread: tiny models on a shared 2-core machine run ~10x faster."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
