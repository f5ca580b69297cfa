"""The bundled toy weights (refcomp/toy/weights/, written by `refcomp toy reproduce --bundle`):
size budget, the `refcomp demo` command, and a regression check of what bench/TOY.md reports,
re-measured on a small fixed slice of the held-out `eval` split.

Thresholds come from the measurement recorded in bench/TOY.md (see the numbers quoted at
each assertion); they leave a margin for CPU/BLAS differences, not for a worse model.
"""
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from refcomp.toy.bench import EvalConfig, eval_scenes, evaluate_row
from refcomp.toy.demo import BUNDLED_WEIGHTS, PANEL
from refcomp.toy.parts import ADAPTER_FILE, FILES, load_parts
from refcomp.toy.sample import SampleConfig
from refcomp_core.checkpoint import read_info

HELD_OUT = 16                     # the first 16 layouts of the eval split (TOY.md measures 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bundle_is_complete_small_and_safetensors_only():
    names = sorted(os.listdir(BUNDLED_WEIGHTS))
    assert set(FILES.values()) | {ADAPTER_FILE} <= set(names), f"run `refcomp toy reproduce --bundle`: {names}"
    assert all(n.endswith(".safetensors") for n in names), names
    total = sum(os.path.getsize(os.path.join(BUNDLED_WEIGHTS, n)) for n in names)
    assert total <= 20 * 2 ** 20
    assert read_info(os.path.join(BUNDLED_WEIGHTS, ADAPTER_FILE)).stage == 3


def test_refcomp_demo_without_arguments_writes_the_png_in_under_a_minute(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "refcomp")
    start = time.perf_counter()
    run = subprocess.run([exe, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    assert elapsed < 60, f"refcomp demo took {elapsed:.1f} s"
    with Image.open(tmp_path / "refcomp_toy_demo.png") as im:
        assert im.size == (3 * PANEL, PANEL) and im.mode == "RGB"


@pytest.fixture(scope="module")
def measured():
    parts = load_parts(BUNDLED_WEIGHTS)
    adapter = parts.load_adapter(os.path.join(BUNDLED_WEIGHTS, ADAPTER_FILE))
    cfg = EvalConfig(count=HELD_OUT, sample=SampleConfig(steps=20, cfg_scale=3.0))
    scenes = eval_scenes(HELD_OUT)
    torch.set_num_threads(1)
    return {"captions_only": evaluate_row(parts, None, cfg, scenes=scenes)[0],
            "stage3": evaluate_row(parts, adapter.eval(), cfg, scenes=scenes)[0]}


def test_stage3_grounds_boxes_clearly_better_than_captions_only(measured):
    # Measured 2026-11-29 on these 16 layouts (bundled fp16 parts, one thread): captions only
    # FG mIoU 0.085, BG 0.128, FG colour 0.231; stage 3 FG 0.204, BG 0.348, FG colour 0.462
    # (TOY.md, 64 layouts: 0.051/0.141/0.143 vs 0.191/0.335/0.420).
    base, ours = measured["captions_only"], measured["stage3"]
    assert base["fg_n"] == ours["fg_n"] >= 20 and base["bg_n"] == ours["bg_n"] >= 20
    assert base["fg_miou"] < 0.12 and base["bg_miou"] < 0.18, base        # the backbone ignores the boxes
    assert ours["fg_miou"] >= 0.17 and ours["fg_miou"] >= base["fg_miou"] + 0.09, (base, ours)
    assert ours["bg_miou"] >= 0.29 and ours["bg_miou"] >= base["bg_miou"] + 0.16, (base, ours)
    assert ours["fg_success"] > base["fg_success"]
    assert ours["fg_colour_acc"] >= base["fg_colour_acc"] + 0.15, (base, ours)   # the references' identity


def test_bundled_alpha_routes_by_depth_and_stage3_trained_the_bridge():
    """What the measurement shows (TOY.md, α table): trained from stage 1 with the routing
    prior, α routes fg-labelled instances FG and mg/bg-labelled ones to the layout branch,
    so the modulation path is used and stage 3's bridge got gradients (no longer zero)."""
    from refcomp.toy.bench import alpha_by_depth
    parts = load_parts(BUNDLED_WEIGHTS)
    adapter = parts.load_adapter(os.path.join(BUNDLED_WEIGHTS, ADAPTER_FILE))
    stats = alpha_by_depth(parts, adapter.eval(), eval_scenes(HELD_OUT))
    # measured: fg 0.877 (all routed FG), mg/bg 0.057 (none routed FG)
    assert stats["fg_routed_fg"] >= 0.9 and stats["bg_routed_fg"] <= 0.05, stats
    assert stats["fg_mean"] - stats["bg_mean"] > 0.5, stats
    assert max(float(b.up.weight.detach().abs().max()) for b in adapter.bridge.per_block) > 0.0
