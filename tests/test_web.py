"""Runs the canvas's JavaScript tests (node --test: the DOM-free layout state and the
headless-Chromium drawing tests) from the one pytest command."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.integration
def test_web_suite_passes():
    node = shutil.which("node")
    assert node, "node is required for the canvas tests (install Node.js 20+)"
    assert os.path.isdir(os.path.join(ROOT, "node_modules", "playwright-core")), \
        "node packages missing: run `npm ci` (the README set-up command does)"
    proc = subprocess.run([node, "--test", "tests/web/"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert "# fail 0" in proc.stdout and "# pass" in proc.stdout, tail
