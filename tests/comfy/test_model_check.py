"""Issue 11.6 (adapter part): a checkpoint for another FLUX is refused by Load RefComp Model when its
optional `model` input is connected, before Instance Encode runs any encoder (real ComfyUI executor)."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from helpers import TINY_ADAPTER
from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import save_adapter
from refcomp_core.config import RefCompConfig
from refcomp_core.hosts.diffusers_flux import config_for

from comfy_harness import run_driver
from comfy_tiny import tiny_diffusers_flux

pytestmark = pytest.mark.integration
LAYOUT = {"version": 1, "width": 256, "height": 256, "instances": [
    {"box": [0.1, 0.1, 0.6, 0.7], "ref": 0, "caption": "a chair", "depth": "fg", "alpha": None}]}


def _prompt(work, ckpt: str) -> dict:
    """TinyFlux -> Load RefComp Model(model) -> Instance Encode(refcomp_model) -> Apply -> KSampler -> save."""
    return {
        "1": {"class_type": "RefCompTestTinyFlux", "inputs": {"path": str(work / "flux.safetensors")}},
        "2": {"class_type": "RefCompTestCond", "inputs": {"seed": 1, "tokens": 5}},
        "3": {"class_type": "RefCompTestCond", "inputs": {"seed": 2, "tokens": 5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": ckpt, "dtype": "fp32", "model": ["1", 0]}},
        "6": {"class_type": "RefCompLoadReferenceSet", "inputs": {
            "folder": "refs_check", "mask_meaning": "mask marks the background (Load Image alpha)"}},
        "7": {"class_type": "RefCompLayoutCanvas", "inputs": {"layout_json": json.dumps(LAYOUT), "width": 256,
                                                              "height": 256, "num_refs": 0, "references": ["6", 0]}},
        "8": {"class_type": "RefCompTestVision", "inputs": {"dim": 12, "name": "clip"}},
        "9": {"class_type": "RefCompTestVision", "inputs": {"dim": 10, "name": "dino"}},
        "10": {"class_type": "RefCompTestClip", "inputs": {"dim": 8}},
        "11": {"class_type": "RefCompInstanceEncode", "inputs": {
            "layout": ["7", 0], "references": ["6", 0], "clip_vision": ["8", 0], "dino": ["9", 0], "clip": ["10", 0],
            "refcomp_model": ["5", 0]}},
        "12": {"class_type": "RefCompApplyFLUX", "inputs": {
            "model": ["1", 0], "refcomp_model": ["5", 0], "instances": ["11", 0], "strength": 1.0,
            "layout_start_percent": 0.0, "layout_end_percent": 0.3, "modulation_start_percent": 0.0,
            "modulation_end_percent": 1.0, "apply_to_uncond": False, "mask_margin": 1.0}},
        "13": {"class_type": "KSampler", "inputs": {
            "model": ["12", 0], "seed": 7, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "14": {"class_type": "RefCompTestSave", "inputs": {"path": str(work / f"{ckpt}.out.safetensors"),
                                                           "samples": ["13", 0]}},
    }


def test_wrong_adapter_is_refused_at_load_before_any_encoder(comfy_env, comfy_root, tmp_path):
    from PIL import Image

    model = tiny_diffusers_flux(seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "flux.safetensors"))
    (tmp_path / "adapters").mkdir()
    save_adapter(tmp_path / "adapters" / "right.safetensors", RefCompAdapter(config_for(model, **TINY_ADAPTER)))
    save_adapter(tmp_path / "adapters" / "wrong.safetensors",
                 RefCompAdapter(RefCompConfig.for_model(hidden_size=64, num_double_blocks=2, num_single_blocks=2,
                                                        num_heads=4, **TINY_ADAPTER)))
    (tmp_path / "extra_model_paths.yaml").write_text(f"refcomp_check:\n  base_path: {tmp_path}\n  refcomp: adapters/\n")
    refs = comfy_root / "input" / "refs_check"
    refs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (200, 10, 10)).save(refs / "chair.png")
    prompts = [_prompt(tmp_path, "wrong.safetensors"), _prompt(tmp_path, "right.safetensors")]
    (tmp_path / "prompts.json").write_text(json.dumps({"prompts": prompts}))
    res = run_driver(comfy_env, comfy_root, tmp_path, "sample_each")
    wrong, right = res["runs"]

    assert wrong["valid"] and not wrong["success"]
    [err] = wrong["errors"]
    assert err["node_type"] == "RefCompLoader", err
    assert "Load RefComp Model: this RefComp checkpoint was trained for a FLUX model with hidden size 64, but the " \
           "model given has hidden size 32" in err["exception_message"], err
    assert "11" not in wrong["executed"], f"Instance Encode ran before the check: {wrong['executed']}"
    assert "5" in wrong["executed"]

    assert right["valid"] and right["success"], right
    order = right["executed"]
    assert order.index("5") < order.index("11") < order.index("12"), order   # loader check, then encoders
    assert (tmp_path / "right.safetensors.out.safetensors").is_file()
