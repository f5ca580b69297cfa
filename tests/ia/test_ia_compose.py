"""End to end, headless: `refcomp convert instanceassemble` then `refcomp compose` with an
InstanceAssemble / DenseLayout JSON of caption-only boxes (no references, no vision encoders)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compose_fixtures import T5_LEN, build_tiny_models
from ia_files import lora_tensors, write_layout_pth, write_lora
from refcomp import cli
from refcomp.compose import read_layout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models_ia"))


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ia_release")
    config_path = tiny.flux / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    write_layout_pth(root / "layout.pth", config, scale=0.5)
    write_lora(root / "lora.safetensors", lora_tensors(config, rank=2), "peft")
    out = root / "ia.safetensors"
    assert cli.main(["convert", "instanceassemble", "--layout", str(root / "layout.pth"), "--lora",
                     str(root / "lora.safetensors"), "--out", str(out), "--transformer-config", str(config_path)]) == 0
    return out


IA_DOC = {"prompt": "a cat in the tree", "width": 64, "height": 48, "seed": 3,
          "annos": [{"bbox": [0, 0, 40, 32], "category_name": "cat", "caption": "a tabby cat"},
                    {"bbox": [24, 16, 70, 48], "category_name": "tree", "caption": ""}]}


def _compose(tiny, tmp_path, adapter_args, *extra) -> np.ndarray:
    layout = tmp_path / "dense.json"
    layout.write_text(json.dumps(IA_DOC))
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.png"
    args = ["compose", "--layout", str(layout), "--flux", str(tiny.flux), "--out", str(out), "--steps", "4",
            "--max-sequence-length", str(T5_LEN), "--device", "cpu", "--seed", "3", *adapter_args, *extra]
    assert cli.main(args) == 0
    with Image.open(out) as image:
        return np.asarray(image, dtype=np.int16)


def test_instanceassemble_json_imports_to_layout_v1():
    layout = read_layout(json.dumps(IA_DOC), num_refs=0)
    assert layout.width == 64 and layout.height == 48 and layout.extra["prompt"] == "a cat in the tree"
    assert [i.caption for i in layout.instances] == ["cat, a tabby cat", "tree"]
    assert layout.instances[0].box == (0.0, 0.0, 40 / 64, 32 / 48)
    assert layout.instances[1].box == (24 / 64, 16 / 48, 1.0, 1.0)             # clamped to the image
    assert all(i.ref is None for i in layout.instances)


def test_convert_then_compose_gives_layout_and_scale_zero_is_vanilla(tiny, converted, tmp_path):
    """4 steps, as FLUX.1-schnell: InstanceAssemble grounds int(0.3 * 4) = 1 step."""
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(str(tiny.flux), local_files_only=True)
    image = pipe(prompt=IA_DOC["prompt"], height=48, width=64, num_inference_steps=4, max_sequence_length=T5_LEN,
                 guidance_scale=3.5, generator=torch.Generator().manual_seed(3)).images[0]
    plain = np.asarray(image, dtype=np.int16)
    with torch.random.fork_rng():
        ia = _compose(tiny, tmp_path, ["--adapter", str(converted)])
        off = _compose(tiny, tmp_path, ["--adapter", str(converted), "--strength", "0"])
        prompted = _compose(tiny, tmp_path, ["--adapter", str(converted)], "--prompt", "a cat in the tree")
    assert np.abs(ia - plain).max() > 0                     # the layout pathway changed the image
    assert np.array_equal(off, plain)                       # scale 0 = plain FLUX, exactly
    assert np.array_equal(prompted, ia)                     # the prompt came from the layout file
    assert (tmp_path / "out1_layout.png").is_file()


def test_too_few_steps_for_a_grounding_step_warns(tiny, converted, tmp_path, caplog):
    _compose(tiny, tmp_path, ["--adapter", str(converted)], "--steps", "3")
    assert "no grounding step" in caplog.text


def test_python_import_matches_the_canvas_fixture_pair():
    """The same InstanceAssemble document imports to the same layout v1 on the canvas (web/layout_codec.js,
    tested against this pair with node --test) and in Python."""
    from pathlib import Path
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "instanceassemble"
    got = read_layout((fixtures / "dense_example.json").read_text(), num_refs=0).to_dict()
    want = json.loads((fixtures / "dense_example.v1.json").read_text())
    assert got == want
