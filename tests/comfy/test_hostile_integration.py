"""Hostile input through a real ComfyUI executor (issue 12): a damaged reference image, a
canvas JSON with an absurd size, a truncated checkpoint and an unreadable alpha override
each stop the prompt with the pack's own one-line message naming the file or field; the
user sees exactly what the host-free tests check."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from comfy_harness import run_driver
from helpers import TINY_ADAPTER
from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import save_adapter
from refcomp_core.config import RefCompConfig

pytestmark = pytest.mark.integration

GOOD = {"version": 1, "width": 256, "height": 256,
        "instances": [{"box": [0.0, 0.0, 0.5, 0.5], "ref": 0, "caption": "a cat", "depth": "fg", "alpha": None}]}


def _preview(work, name: str, **inputs) -> dict:
    return {f"{name}_preview": {"class_type": "RefCompLayoutPreview", "inputs": inputs},
            f"{name}_save": {"class_type": "RefCompTestSave",
                             "inputs": {"path": str(work / f"{name}.safetensors"), "image": [f"{name}_preview", 0]}}}


def _canvas(layout_json: str, refs: str | None = None) -> dict:
    inputs = {"layout_json": layout_json, "width": 256, "height": 256, "num_refs": 1}
    return {"class_type": "RefCompLayoutCanvas", "inputs": {**inputs, **({"references": [refs, 0]} if refs else {})}}


def _prompts(work) -> dict[str, dict]:
    refs = lambda folder: {"class_type": "RefCompLoadReferenceSet", "inputs": {            # noqa: E731
        "folder": folder, "mask_meaning": "mask marks the background (Load Image alpha)"}}
    encode = {"clip": {"class_type": "RefCompTestVision", "inputs": {"dim": 12, "name": "clip"}},
              "dino": {"class_type": "RefCompTestVision", "inputs": {"dim": 10, "name": "dino"}},
              "text": {"class_type": "RefCompTestClip", "inputs": {"dim": 8}},
              "refs": refs("hostile_refs_ok"), "canvas": _canvas(json.dumps(GOOD), "refs"),
              "encode": {"class_type": "RefCompInstanceEncode", "inputs": {
                  "layout": ["canvas", 0], "references": ["refs", 0], "clip_vision": ["clip", 0], "dino": ["dino", 0],
                  "clip": ["text", 0]}},
              "alpha": {"class_type": "RefCompAlphaPredictor", "inputs": {
                  "instances": ["encode", 0], "mode": "depth labels", "fg_alpha": 0.8, "mg_alpha": 0.3,
                  "bg_alpha": 0.0, "overrides": "0: 1.2.3"}}}
    return {
        "image": {"refs": refs("hostile_refs_bad"), "canvas": _canvas(json.dumps(GOOD), "refs"),
                  **_preview(work, "image", layout=["canvas", 0])},
        "canvas": {"canvas": _canvas(json.dumps({**GOOD, "width": 10 ** 7})), **_preview(work, "canvas",
                                                                                          layout=["canvas", 0])},
        "caption": {"canvas": _canvas(json.dumps(GOOD).replace("a cat", "a \\ud800 cat")),
                    **_preview(work, "caption", layout=["canvas", 0])},
        "checkpoint": {"ckpt": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": "truncated.safetensors",
                                                                          "dtype": "fp32"}},
                       "canvas": _canvas(json.dumps(GOOD)),
                       **_preview(work, "checkpoint", layout=["canvas", 0], refcomp_model=["ckpt", 0])},
        "overrides": {**encode, **_preview(work, "overrides", instances=["alpha", 0])},
        "control": {"canvas": _canvas(json.dumps(GOOD)), **_preview(work, "control", layout=["canvas", 0])},
    }


def test_hostile_inputs_show_the_packs_message_in_comfyui(comfy_env, comfy_root, tmp_path):
    good_refs, bad_refs = comfy_root / "input" / "hostile_refs_ok", comfy_root / "input" / "hostile_refs_bad"
    for folder in (good_refs, bad_refs):
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "a.png")
    (bad_refs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "adapters").mkdir()
    adapter = RefCompAdapter(RefCompConfig(hidden_size=32, num_double_blocks=2, num_single_blocks=2, num_heads=2,
                                           **TINY_ADAPTER))
    save_adapter(tmp_path / "adapters" / "truncated.safetensors", adapter)
    ckpt = tmp_path / "adapters" / "truncated.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-40])
    (tmp_path / "extra_model_paths.yaml").write_text(f"refcomp_test:\n  base_path: {tmp_path}\n  refcomp: adapters/\n")
    (tmp_path / "prompts.json").write_text(json.dumps(_prompts(tmp_path)))

    errors = run_driver(comfy_env, comfy_root, tmp_path, "errors")["errors"]

    def message(name: str) -> str:
        err = errors[name]
        assert err and "exception_message" in err, (name, err)
        text = err["exception_message"].strip()
        assert "\n" not in text and "Traceback" not in text, text
        return text

    assert errors["control"] is None                                    # the harness runs a good prompt
    assert message("image").startswith("Load Reference Set: cannot read the image ") and "b.png" in message("image")
    assert errors["image"]["node_type"] == "RefCompLoadReferenceSet"
    assert message("canvas").startswith("layout.width: expected an integer number of pixels in [16, 8192]")
    assert message("caption").startswith("layout.instances[0].caption: the text is not valid Unicode")
    assert "truncated.safetensors" in message("checkpoint") and "truncated" in message("checkpoint").split(": ", 1)[1]
    assert errors["checkpoint"]["node_type"] == "RefCompLoader"
    assert message("overrides") == ("alpha overrides: cannot read '0: 1.2.3'; write 'index: alpha' pairs like "
                                    "'0: 0.9, 2: 0.2'")
