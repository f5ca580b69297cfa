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
from refcomp_core.checkpoint import load_adapter, read_info

HELD_OUT = 16                     # the first 16 layouts of the eval split (TOY.md measures 64)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    d = parts.backbone_config
    adapter, _ = load_adapter(os.path.join(BUNDLED_WEIGHTS, ADAPTER_FILE),
                              hidden_size=d.num_attention_heads * d.attention_head_dim,
                              num_double_blocks=d.num_layers, num_single_blocks=d.num_single_layers)
    cfg = EvalConfig(count=HELD_OUT, sample=SampleConfig(steps=20, cfg_scale=3.0))
    scenes = eval_scenes(HELD_OUT)
    torch.set_num_threads(1)
    return {"captions_only": evaluate_row(parts, None, cfg, scenes=scenes)[0],
            "stage3": evaluate_row(parts, adapter.eval(), cfg, scenes=scenes)[0]}


def test_stage3_grounds_boxes_clearly_better_than_captions_only(measured):
    # Measured 2026-11-29 on these 16 layouts (bundled fp16 parts): captions only FG mIoU 0.022,
    # BG 0.044; stage 3 FG 0.155, BG 0.182 (TOY.md, 64 layouts: 0.027/0.051 vs 0.122/0.157).
    base, ours = measured["captions_only"], measured["stage3"]
    assert base["fg_n"] == ours["fg_n"] >= 20 and base["bg_n"] == ours["bg_n"] >= 20
    assert base["fg_miou"] < 0.06 and base["bg_miou"] < 0.09, base        # the backbone ignores the boxes
    assert ours["fg_miou"] >= 0.10 and ours["fg_miou"] >= base["fg_miou"] + 0.07, (base, ours)
    assert ours["bg_miou"] >= 0.12 and ours["bg_miou"] >= base["bg_miou"] + 0.07, (base, ours)
    assert ours["fg_success"] > base["fg_success"] and ours["fg_colour_acc"] > base["fg_colour_acc"]


def test_bundled_alpha_routes_every_instance_to_the_layout_branch():
    """What the measurement shows (TOY.md, α table): trained from stage 1, α drifts just below
    0.5 for FG- and BG-labelled instances alike, so nothing is routed FG, the modulation is
    never used and stage 3's bridge never gets a gradient (it is still zero-initialised)."""
    from refcomp.toy.bench import alpha_by_depth
    parts = load_parts(BUNDLED_WEIGHTS)
    d = parts.backbone_config
    adapter, _ = load_adapter(os.path.join(BUNDLED_WEIGHTS, ADAPTER_FILE),
                              hidden_size=d.num_attention_heads * d.attention_head_dim,
                              num_double_blocks=d.num_layers, num_single_blocks=d.num_single_layers)
    stats = alpha_by_depth(parts, adapter.eval(), eval_scenes(HELD_OUT))
    assert stats["fg_routed_fg"] == 0.0 and stats["bg_routed_fg"] == 0.0, stats
    assert 0.48 < stats["fg_mean"] < 0.5 and abs(stats["fg_mean"] - stats["bg_mean"]) < 0.005, stats
    assert all(float(b.up.weight.detach().abs().max()) == 0.0 for b in adapter.bridge.per_block)
