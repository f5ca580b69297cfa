"""The canvas inside the real ComfyUI frontend: a real ComfyUI main.py serving the frontend it pins
(1.47.10) and the newest one on PyPI (`--front-end-root`, COMFYUI_FRONTEND_NEWEST), driven in headless
Debian chromium by playwright-core with real mouse and keyboard events.

Each test runs one scenario script (tests/comfy/frontend/scn_<name>.mjs) and reads its RESULT line.
Skipped loudly without COMFYUI_PATH/COMFYUI_PYTHON (failed under CI=true); fails (never skips) when
they are set but node, playwright-core or /usr/bin/chromium is missing.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from comfy_harness import PACK_FOLDER_NAME, require_or_skip

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
PACK = HERE.parents[1]
FRONTENDS = ("pinned", "newest")
REFS_FOLDER = "refcomp_canvas_refs"
SHELF_FOLDER = "refcomp_shelf"
FEW_FOLDER = "refcomp_few"
BATCH_IMAGE = "refcomp_canvas_batch.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def palette(n: int) -> list[list[int]]:
    """n clearly different RGB colours (hues around the wheel, two brightness levels)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / n, 0.85, 0.95 if i % 2 == 0 else 0.6)
        out.append([round(r * 255), round(g * 255), round(b * 255)])
    return out


def _write_solid_images(folder: Path, colours: list[list[int]], size=(48, 72)) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", size, tuple(colour)).save(folder / f"ref_{i:02d}.png")


@pytest.fixture(scope="session")
def reference_images(comfy_root) -> dict:
    """Solid-colour reference images in ComfyUI's input folder: 4 for the canvas tests, 3 and 22 for
    the example workflows' folders, and one image for an IMAGE batch."""
    from PIL import Image
    inp = comfy_root / "input"
    refs = palette(4)
    _write_solid_images(inp / REFS_FOLDER, refs)
    few = palette(3)
    _write_solid_images(inp / FEW_FOLDER, few)
    shelf = palette(22)
    _write_solid_images(inp / SHELF_FOLDER, shelf)
    batch = [200, 30, 200]
    Image.new("RGB", (40, 40), tuple(batch)).save(inp / BATCH_IMAGE)
    return {"refs": {"folder": REFS_FOLDER, "colors": refs}, "few": {"folder": FEW_FOLDER, "colors": few},
            "shelf": {"folder": SHELF_FOLDER, "colors": shelf}, "batch": {"image": BATCH_IMAGE, "color": batch}}


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request) -> str | None:
    """None for the frontend ComfyUI pins, else the newest frontend's static folder."""
    if request.param == "pinned":
        return None
    root = os.environ.get("COMFYUI_FRONTEND_NEWEST")
    require_or_skip(bool(root), "set COMFYUI_FRONTEND_NEWEST (the static/ folder of the newest "
                                "comfyui-frontend-package; .ci/comfyui_env.sh installs it)")
    assert (Path(root) / "index.html").is_file(), f"COMFYUI_FRONTEND_NEWEST={root} has no index.html"
    return root


@pytest.fixture(scope="module")
def comfy_server(comfy_env, comfy_root, reference_images, frontend):
    _, python = comfy_env
    port = _free_port()
    log_path = comfy_root / f"server-{port}.log"
    log = open(log_path, "w")
    cmd = [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_FOLDER_NAME,
           "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
    if frontend:
        cmd += ["--front-end-root", frontend]
    proc = subprocess.Popen(cmd, cwd=comfy_root, stdout=log, stderr=subprocess.STDOUT)
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
        assert proc.poll() is None, log_path.read_text()[-4000:]
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


@pytest.fixture(scope="module")
def browser_tools() -> str:
    node = shutil.which("node")
    assert node, "node not found: install Node.js to run the frontend tests"
    assert (PACK / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in the repo (playwright-core)"
    assert Path(os.environ.get("REFCOMP_CHROMIUM", "/usr/bin/chromium")).exists(), "install Debian chromium"
    return node


def run_scenario(node: str, base: str, name: str, ctx: dict | None = None, timeout: int = 300) -> dict:
    proc = subprocess.run([node, str(HERE / "frontend" / "run_scenario.mjs"), base, name, json.dumps(ctx or {})],
                          capture_output=True, text=True, timeout=timeout, cwd=PACK)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"scenario {name} printed no RESULT:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["ok"], f"scenario {name} failed:\n{res['error']}"
    return res["details"]


def test_extension_is_served(comfy_server):
    info = json.loads(urllib.request.urlopen(f"{comfy_server}/object_info/RefCompLayoutCanvas").read())
    assert "layout_json" in info["RefCompLayoutCanvas"]["input"]["required"]
    ext = urllib.request.urlopen(f"{comfy_server}/extensions/{PACK_FOLDER_NAME}/refcomp_canvas.js").read()
    assert b"RefCompLayoutCanvas" in ext


def test_ctrl_z_stays_in_the_canvas(comfy_server, browser_tools):
    """Issue 11.1: canvas Ctrl+Z never runs ComfyUI's workflow undo; each edit is one ComfyUI undo step."""
    run_scenario(browser_tools, comfy_server, "undo")


def test_workflows_load_without_false_errors(comfy_server, browser_tools, reference_images):
    """Issue 11.2: right reference count from the first frame; num_refs changes reach the form."""
    run_scenario(browser_tools, comfy_server, "false_error", reference_images)


def test_editor_keeps_its_width(comfy_server, browser_tools):
    """Issue 11.3: selection with the properties panel open, zoom and resize keep the editor's size."""
    run_scenario(browser_tools, comfy_server, "width")


def test_new_box_over_existing_boxes(comfy_server, browser_tools):
    """Issue 11.4: draw mode / Shift+drag / padding drags draw; repeated clicks cycle the selection."""
    run_scenario(browser_tools, comfy_server, "draw_over")


def test_references_visible(comfy_server, browser_tools, reference_images):
    """Issue 11.5: thumbnails in boxes (screenshot pixels), caption on hover, box list, hint, disabled look."""
    run_scenario(browser_tools, comfy_server, "references", reference_images)


def test_shelf_of_22_references_from_scratch(comfy_server, browser_tools, reference_images):
    """Issue 11, done when: a 22-box shelf layout built from scratch, every reference visible in its box."""
    run_scenario(browser_tools, comfy_server, "shelf_from_scratch", reference_images)


def test_batch_references_after_a_run(comfy_server, browser_tools, reference_images):
    """IMAGE-batch references: thumbnails and count from the canvas node's UI output after a run."""
    run_scenario(browser_tools, comfy_server, "executed_refs", reference_images)


def test_paste_instanceassemble_and_bigger_editor(comfy_server, browser_tools):
    """InstanceAssemble JSON pasted with Ctrl+V becomes the layout; the pop-out editor edits the same layout."""
    run_scenario(browser_tools, comfy_server, "import")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_reference_routes_stay_in_the_input_folder(comfy_server, comfy_root, reference_images):
    base = f"{comfy_server}/api/refcomp"
    status, body = _get(f"{base}/references?folder={REFS_FOLDER}")
    listing = json.loads(body)
    assert status == 200 and listing["names"] == [f"ref_{i:02d}.png" for i in range(4)]
    status, body = _get(f"{comfy_server}/api{listing['urls'][2]}")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
    outside = "outside ComfyUI's input folder"
    for query, code, words in (("references?folder=..%2F", 400, outside),
                               ("references?folder=nope", 404, "does not exist"),
                               (f"thumbnail?folder={REFS_FOLDER}&name=..%2F{BATCH_IMAGE}", 404, "not a reference"),
                               ("thumbnail?folder=..&name=main.py", 400, outside)):
        status, body = _get(f"{base}/{query}")
        assert status == code and words in json.loads(body)["error"], (query, status, body)
    bad = comfy_root / "input" / "refcomp_bad"
    bad.mkdir(exist_ok=True)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status, body = _get(f"{base}/thumbnail?folder=refcomp_bad&name=broken.png")
    assert status == 400 and "broken.png" in json.loads(body)["error"], body


def test_canvas_layout_reaches_the_server(comfy_server, browser_tools, comfy_root):
    """A drawn box travels in the API prompt and the canvas node executes on the server."""
    details = run_scenario(browser_tools, comfy_server, "queue")
    assert details["postedLayout"], details
    layout = json.loads(details["postedLayout"])
    assert layout["version"] == 1 and len(layout["instances"]) == 1
    assert details["apiLayout"] == details["postedLayout"]
    assert details["executed"] and details["executed"]["status_str"] == "success", (
        details["executed"], sorted(comfy_root.glob("server-*.log"))[-1].read_text()[-3000:])
    assert json.loads(details["historyLayout"]) == layout
