"""The canvas inside the real ComfyUI frontend (main.py + headless chromium via playwright-core).

Skipped loudly without COMFYUI_PATH/COMFYUI_PYTHON; fails (never skips) when they are set
but node, playwright-core or /usr/bin/chromium is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from comfy_harness import PACK_FOLDER_NAME

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
PACK = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def comfy_server(comfy_env, comfy_root):
    _, python = comfy_env
    port = _free_port()
    log = open(comfy_root / "server.log", "w")
    proc = subprocess.Popen([str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_FOLDER_NAME,
                             "--disable-api-nodes", "--database-url", "sqlite:///:memory:"],
                            cwd=comfy_root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"{base}/object_info/KSampler", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, (comfy_root / "server.log").read_text()[-4000:]
        _post(f"{base}/api/settings", {"Comfy.TutorialCompleted": True,
                                       "Comfy.Notification.ShowVersionUpdates": False})
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_canvas_in_real_frontend_carries_layout(comfy_server, comfy_root):
    node = shutil.which("node")
    assert node, "node not found: install Node.js to run the frontend test"
    assert (PACK / "node_modules" / "playwright-core").is_dir(), "run `npm install` in the repo (playwright-core)"
    assert Path(os.environ.get("REFCOMP_CHROMIUM", "/usr/bin/chromium")).exists(), "install Debian chromium"
    info = json.loads(urllib.request.urlopen(f"{comfy_server}/object_info/RefCompLayoutCanvas").read())
    assert "layout_json" in info["RefCompLayoutCanvas"]["input"]["required"]
    ext = urllib.request.urlopen(f"{comfy_server}/extensions/{PACK_FOLDER_NAME}/refcomp_canvas.js").read()
    assert b"RefCompLayoutCanvas" in ext
    proc = subprocess.run([node, str(HERE / "frontend_canvas.mjs"), comfy_server], capture_output=True, text=True,
                          timeout=240, cwd=PACK)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert not res["errors"], res["errors"]
    assert res["extensionLoaded"] and res["hiddenJsonWidget"]
    layout = json.loads(res["postedLayout"])
    assert layout["version"] == 1 and len(layout["instances"]) == 1
    x0, y0, x1, y1 = layout["instances"][0]["box"]
    # drawn from 30 % to 60 % / 65 % of the widget; the editor letterboxes the square image
    assert 0.1 < x0 < 0.4 and 0.2 < y0 < 0.4 and 0.5 < x1 < 0.85 and 0.55 < y1 < 0.75 and x1 - x0 > 0.3, layout
    assert res["apiLayout"] == res["postedLayout"]
    assert res["executed"] and res["executed"]["status_str"] == "success", (
        res["executed"], (comfy_root / "server.log").read_text()[-3000:])
    assert json.loads(res["historyLayout"]) == layout
