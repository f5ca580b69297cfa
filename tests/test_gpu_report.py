"""bench/gpu_report.py runs end to end: `--dry-run` is the whole GPU script on CPU with a tiny
config and CUDA's (fused) hot path, writing the report (issue 13). Timing is never asserted."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIO = r"\d+\.\d{3}x"


def _run(out: Path, *extra: str, timeout: float = 1500) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_report.py"), "--dry-run", "--out", str(out),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out.read_text(encoding="utf-8")


@pytest.mark.integration
def test_dry_run_writes_every_section(tmp_path: Path) -> None:
    md = _run(tmp_path / "GPU.md")
    assert md.startswith("# GPU report") and "**DRY RUN**" in md and "fused (flex_attention)" in md
    for title in ("Transformer step", "Training step", "cuDNN attention under gradient checkpointing",
                  "Double block", "torch.compile of the double block", "Notes"):
        assert f"## {title}" in md, title
    for label in ("RefComp: step inside the layout window", "RefComp: step outside it",
                  "RefComp: whole 28-step run (computed)", "InstanceAssemble pathway: step inside the layout window",
                  "InstanceAssemble pathway: whole 28-step run (computed)"):
        assert re.search(rf"\| {re.escape(label)} \| {RATIO} \| {RATIO} \|", md), label
    for label in ("vanilla forward + backward (the floor)", "stage 1, 18 boxes", "stage 1, 50 boxes",
                  "stage 2, 50 boxes", "stage 3, 50 boxes"):
        assert re.search(rf"\| {re.escape(label)} \| \d+\.\d+ \| {RATIO} \|", md), label
    for case in ("sdpa", "sdpa_ckpt", "sdpa_layout_ckpt", "block_ckpt", "transformer_ckpt"):
        assert f"| {case} | PROBE {case} ok" in md, case
    fused = re.search(r"\| mod \+ assemble, 50 boxes \| " + RATIO + r" \| (\d+) \|", md)
    assert fused and int(fused.group(1)) < 300                     # the fused path's op count (tests/test_op_count.py)
    assert "Skipped" not in md


def test_a_short_budget_skips_sections_and_says_so(tmp_path: Path) -> None:
    md = _run(tmp_path / "GPU.md", "--budget", "1", timeout=600)
    assert "## Notes" in md
    for section in ("transformer step, 18 boxes", "training steps", "probe sdpa", "double block", "torch.compile"):
        assert f"- Skipped: {section}" in md, section
