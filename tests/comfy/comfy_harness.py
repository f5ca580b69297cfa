"""Running tests/comfy/driver.py in ComfyUI's own python."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PACK_FOLDER_NAME = "comfyui-refcomp"


def require_or_skip(ok: bool, why: str) -> None:
    """Skip loudly when a real-ComfyUI prerequisite is missing; under CI (CI=true) fail instead,
    since .ci/test.sh provides every prerequisite there and a skip would hide the host."""
    if ok:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {why}")
    pytest.skip(f"SKIPPED LOUDLY: {why}")


def run_driver(comfy_env, comfy_root: Path, work: Path, task: str, timeout: int = 600) -> dict:
    _, python = comfy_env
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(python), str(HERE / "driver.py"), str(comfy_root),
                           str(comfy_root / "custom_nodes" / PACK_FOLDER_NAME), str(work), task],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(comfy_root))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"driver task {task} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["_stderr"] = proc.stderr[-8000:]
    return result
