"""The DESIGN §7 benchmarks run end to end on tiny dims and print their ratio lines.
Timing is never asserted (CONVENTIONS: benchmarks never fail a test on time)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--heads", "2", "--head-dim", "16", "--grid", "16", "--text", "8", "--lora-rank", "4",
        "--boxes", "3", "50", "--threads", "1"]
RATIO = re.compile(r"^RATIO (?P<label>.+?) = (?P<value>\d+\.\d+)x", re.MULTILINE)


def _run(script: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *TINY], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {m["label"]: float(m["value"]) for m in RATIO.finditer(proc.stdout + proc.stderr)}


@pytest.mark.parametrize("script, labels", [
    ("assemble_attention.py", ["per_instance/vanilla_block boxes=3", "ours/vanilla_block boxes=50",
                               "speedup per_instance/ours boxes=50"]),
    ("double_block.py", ["plain double_block/vanilla_block", "patched_block(mod+assemble)/vanilla_block instances=50",
                         "patched_block(mod only)/vanilla_block instances=3",
                         "whole-run double-block cost/vanilla instances=50",
                         "whole-run transformer cost/vanilla instances=3"]),
    ("attention_loop.py", ["packed/per_box boxes=3 seeded", "padded+mask/per_box boxes=50 seeded",
                           "bucketed/per_box boxes=50 equal 5x5"]),
    ("instanceassemble.py", ["ia_branch_double(ours)/vanilla_double_block boxes=50",
                             "speedup per_box/ours single boxes=3", "ia_28_step_run(ours)/vanilla_run boxes=50"]),
])
def test_bench_prints_ratios(script: str, labels: list[str]) -> None:
    ratios = _run(script)
    for label in labels:
        assert label in ratios, f"{script} printed no ratio {label!r}; got {sorted(ratios)}"
        assert ratios[label] > 0
