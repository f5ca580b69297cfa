"""Fixtures for the ComfyUI node-pack tests.

Host-free tests import the pack as the package `refcomp_pack` (as ComfyUI does, from
the root __init__.py), so `refcomp_pack.nodes.*` never clashes with ComfyUI's `nodes`.
Integration tests need COMFYUI_PATH (a ComfyUI source tree) and COMFYUI_PYTHON (its
venv's python); they run ComfyUI in a subprocess (tests/comfy/driver.py) on a temp copy
of the tree with this pack symlinked into custom_nodes/comfyui-refcomp.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from comfy_harness import PACK_FOLDER_NAME, require_or_skip  # noqa: E402


def _import_pack():
    if "refcomp_pack" in sys.modules:
        return sys.modules["refcomp_pack"]
    spec = importlib.util.spec_from_file_location("refcomp_pack", PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["refcomp_pack"] = module
    spec.loader.exec_module(module)
    return module


_import_pack()
sys.path.insert(0, str(PACK_DIR / "tests"))   # tests/helpers.py


@pytest.fixture(scope="session")
def comfy_env() -> tuple[Path, Path]:
    path, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    require_or_skip(bool(path and python), "set COMFYUI_PATH (a ComfyUI source tree) and COMFYUI_PYTHON (its venv "
                                           "python), or run the tests through .ci/test.sh, which makes both")
    if not (Path(path) / "main.py").is_file() or not Path(python).exists():
        pytest.fail(f"COMFYUI_PATH={path} has no main.py or COMFYUI_PYTHON={python} does not exist")
    return Path(path), Path(python)


@pytest.fixture(scope="session")
def comfy_root(comfy_env, tmp_path_factory) -> Path:
    """A private copy of the ComfyUI tree (ComfyUI writes into its root) with the pack linked in."""
    src, _ = comfy_env
    root = tmp_path_factory.mktemp("comfyui") / "ComfyUI"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"), symlinks=True)
    (root / "custom_nodes").mkdir(exist_ok=True)
    os.symlink(PACK_DIR, root / "custom_nodes" / PACK_FOLDER_NAME)
    return root


@pytest.fixture(scope="session")
def object_info_run(comfy_env, comfy_root, tmp_path_factory) -> tuple[dict, dict]:
    """(driver result, object_info dump) of the pack loaded into the real ComfyUI."""
    import json
    from comfy_harness import run_driver
    work = tmp_path_factory.mktemp("load")
    res = run_driver(comfy_env, comfy_root, work, "load")
    return res, json.loads((work / "object_info.json").read_text())


@pytest.fixture(scope="session")
def object_info(object_info_run) -> dict:
    return object_info_run[1]
