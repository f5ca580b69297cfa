"""`refcomp demo`: composes from a weights folder and writes references | layout | result."""
import json
import os

import pytest
import torch
from PIL import Image

from refcomp.toy.backbone import ToyBackboneConfig
from refcomp.toy.cli import main
from refcomp.toy.demo import EXAMPLE_LAYOUT, PANEL, references_from_layout
from refcomp.toy.parts import ADAPTER_FILE, new_parts, save_parts
from refcomp_core import RefCompAdapter, parse_layout
from refcomp_core.checkpoint import save_adapter
from refcomp_core.hosts.diffusers_flux import config_for

SMALL = ToyBackboneConfig(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                          axes_dims_rope=(4, 6, 6))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    parts = new_parts(backbone=SMALL)
    save_parts(str(folder), parts, dtype=torch.float16)
    adapter = RefCompAdapter(config_for(parts.transformer, **parts.encoder_dims(), alpha_hidden=8, dense_k=2,
                                        fourier_freqs=2, modulation_rank=4, bridge_rank=2, lora_rank=4))
    save_adapter(str(folder / ADAPTER_FILE), adapter, stage=3, step=0, base_model="refcomp-toy-flux")
    return str(folder)


def test_example_layout_is_valid_and_draws_its_references():
    with open(EXAMPLE_LAYOUT, encoding="utf-8") as f:
        doc = json.load(f)
    refs = references_from_layout(doc)
    layout = parse_layout(doc, num_refs=len(refs))
    assert len(refs) == len(layout.instances) >= 3
    assert {i.depth for i in layout.instances} >= {"fg", "bg"}


def test_demo_writes_a_side_by_side_png(weights, tmp_path):
    out = tmp_path / "demo.png"
    assert main(["demo", "--weights", weights, "--out", str(out), "--steps", "2"]) == 0
    with Image.open(out) as im:
        assert im.size == (3 * PANEL, PANEL) and im.mode == "RGB"
    out2 = tmp_path / "scene.png"
    assert main(["--weights", weights, "--out", str(out2), "--steps", "2", "--scene-seed", "3", "--seed", "5"]) == 0
    assert out2.is_file()


def test_demo_refuses_bad_input_with_exit_code_2(weights, tmp_path, caplog):
    bad = tmp_path / "bad.json"
    doc = json.load(open(EXAMPLE_LAYOUT, encoding="utf-8"))
    del doc["instances"][1]["shape"]
    bad.write_text(json.dumps(doc))
    assert main(["demo", "--weights", weights, "--layout", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "instances[1].shape" in caplog.text
    assert main(["demo", "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y.png")]) == 2
    assert "reproduce" in caplog.text
    assert not os.path.exists(tmp_path / "x.png")
