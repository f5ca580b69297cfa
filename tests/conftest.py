"""Test set-up: tests import `helpers` from this folder; nothing may reach a hub.

Property tests (hypothesis: tests/hostile/, tests/comfy/test_nodes_hostile.py) run under
the `ci` profile unless HYPOTHESIS_PROFILE names another. `ci` is bounded by max_examples
and derandomized (the same examples every run, no database files); it sets no per-example
deadline, which flakes on a busy 2-core machine. `deep` explores far more inputs for a
local hunt (about 3 minutes):
    HYPOTHESIS_PROFILE=deep .venv/bin/python -m pytest tests/hostile tests/comfy/test_nodes_hostile.py
"""
import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

try:
    from hypothesis import HealthCheck, settings
except ImportError:          # only the property tests need it (the dev extra installs it)
    pass
else:
    settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("deep", max_examples=2000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """One intra-op torch thread: tiny models on a shared 2-core machine run ~10x faster."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny random FLUX pipeline, CLIP, DINOv2, adapters and references saved to disk
    (compose_fixtures.py), shared by every test of the session."""
    from compose_fixtures import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))
