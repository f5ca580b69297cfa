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


TEST_PACK = "refcomp_test_nodes"


def install_test_pack(comfy_root: Path) -> str:
    """The test-only nodes (driver_nodes.py) as a custom node pack of the temp ComfyUI copy."""
    import shutil
    pack = comfy_root / "custom_nodes" / TEST_PACK
    pack.mkdir(exist_ok=True)
    shutil.copy(HERE / "driver_nodes.py", pack / "driver_nodes.py")
    (pack / "__init__.py").write_text("from .driver_nodes import NODE_CLASS_MAPPINGS\n")
    return TEST_PACK


def _request(url: str, data: dict | None = None) -> dict:
    import urllib.request
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read() or b"{}")


class Server:
    """`main.py` of the temp ComfyUI copy with this pack and the test pack, on a free port."""

    def __init__(self, comfy_env, comfy_root: Path, log_path: Path) -> None:
        import socket
        _, python = comfy_env
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log_path, self.base = log_path, f"http://127.0.0.1:{port}"
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-all-custom-nodes",
             "--whitelist-custom-nodes", PACK_FOLDER_NAME, install_test_pack(comfy_root), "--disable-api-nodes",
             "--database-url", "sqlite:///:memory:"], cwd=comfy_root, stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        import time
        for _ in range(240):
            assert self.proc.poll() is None, self.log()[-4000:]
            try:
                _request(f"{self.base}/object_info/RefCompTestTinyFlux")
                return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError("ComfyUI did not start in 120 s:\n" + self.log()[-4000:])

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def run(self, prompt: dict, timeout_s: float = 300) -> dict:
        """POST /prompt, wait for /history; -> the prompt's status ({status_str, completed, messages})."""
        import time
        sent = _request(f"{self.base}/prompt", {"prompt": prompt, "client_id": "refcomp-test"})
        assert not sent.get("node_errors"), sent
        pid = sent["prompt_id"]
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            history = _request(f"{self.base}/history/{pid}")
            if pid in history and history[pid].get("status", {}).get("completed") is not None:
                return history[pid]["status"]
            time.sleep(0.5)
        raise AssertionError(f"prompt {pid} did not finish in {timeout_s} s:\n" + self.log()[-3000:])
