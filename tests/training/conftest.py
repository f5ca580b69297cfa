"""Fixtures for the trainer tests: tiny random models (tests/compose_fixtures.py), a
tiny generated dataset, and a work folder holding a copy of configs/tiny_cpu.yaml."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
TINY_CONFIG = REPO / "training" / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from compose_fixtures import build_tiny_models
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from dataset import make_dataset
    root = tmp_path_factory.mktemp("tiny_data")
    make_dataset(root)
    return root


@pytest.fixture
def workdir(tmp_path, tiny_models, tiny_data):
    """tmp folder with tiny/ -> models, data/ -> dataset, config.yaml = tiny_cpu.yaml."""
    (tmp_path / "tiny").mkdir()
    for name in ("flux", "clip", "dino"):
        os.symlink(getattr(tiny_models, name), tmp_path / "tiny" / name)
    os.symlink(tiny_data, tmp_path / "data")
    shutil.copy(TINY_CONFIG, tmp_path / "config.yaml")
    return tmp_path


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every training test runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """accelerate keeps one process-wide state (a real run is one process); reset it so
    in-process runs with different settings do not collide."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
