"""The InstanceAssemble pathway in a real ComfyUI 0.29: from a converted released-format file,
against the naive peft oracle (tests/ia/ia_oracle.py), and end to end through the HTTP `/prompt`
of a running server with caption-only boxes. Skipped loudly without COMFYUI_PATH/COMFYUI_PYTHON."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_harness import Server, run_driver
from comfy_tiny import TINY_DIFFUSERS, img_ids, pack, tiny_diffusers_flux, unpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ia"))
import ia_oracle  # noqa: E402
from ia_files import lora_tensors, write_layout_pth, write_lora  # noqa: E402
from refcomp_core.released.instanceassemble import TargetSpec, convert  # noqa: E402

pytestmark = pytest.mark.integration
H, W = 6, 8                                   # tokens of a 12 x 16 latent (96 x 128 px)
LAYOUT = {"version": 1, "width": 128, "height": 96, "instances": [
    {"box": [0.0, 0.0, 0.625, 0.5], "caption": "a cat"}, {"box": [0.25, 0.25, 1.0, 1.0], "caption": "a tree"},
    {"box": [0.5, 0.0, 0.75, 1.0], "caption": None}]}


def _release(root: Path) -> tuple[Path, dict, Path]:
    """Released-format files for the tiny FLUX, converted; -> (converted file, layout weights, lora file)."""
    weights = write_layout_pth(root / "layout.pth", TINY_DIFFUSERS, scale=0.3)
    write_lora(root / "lora.safetensors", lora_tensors(TINY_DIFFUSERS, rank=3), "peft")
    out = root / "ia_tiny.safetensors"
    convert(layout=root / "layout.pth", lora=root / "lora.safetensors", out=out,
            spec=TargetSpec.from_diffusers_config(TINY_DIFFUSERS))
    return out, weights, root / "lora.safetensors"


def write_ia_work(work: Path):
    """The tiny FLUX, the converted file (as ia.safetensors), inputs and layout in `work`.
    -> (model, layout weights, LoRA file, inputs)"""
    model = tiny_diffusers_flux(seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "flux.safetensors"))
    converted, weights, lora_file = _release(work)
    shutil.copy(converted, work / "ia.safetensors")
    g = torch.Generator().manual_seed(5)
    inputs = dict(x=torch.randn(1, 16, 2 * H, 2 * W, generator=g), sigma=torch.full((1,), 0.8),
                  context=torch.randn(1, 5, 24, generator=g), pooled=torch.randn(1, 20, generator=g),
                  guidance=torch.full((1,), 3.5), caption=torch.randn(3, 20, generator=g),
                  schedule=torch.linspace(0.8, 0.0, 29))
    save_file(inputs, str(work / "inputs.safetensors"))
    (work / "layout.json").write_text(json.dumps(LAYOUT))
    return model, weights, lora_file, inputs


@pytest.fixture(scope="module")
def ia_run(comfy_env, comfy_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ia_parity")
    model, weights, lora_file, inputs = write_ia_work(work)
    res = run_driver(comfy_env, comfy_root, work, "ia_parity")
    return model, weights, lora_file, inputs, load_file(str(work / "outputs.safetensors")), res


def _oracle(model, weights, lora_file, inputs, rows=(True,)) -> torch.Tensor:
    import copy
    from ia_setup import attach_layout_forward
    m = ia_oracle.load_peft(copy.deepcopy(model), str(lora_file))
    attach_layout_forward(m, weights)
    x, sigma = inputs["x"], inputs["sigma"]
    feed = dict(hidden_states=pack(x), encoder_hidden_states=inputs["context"], pooled_projections=inputs["pooled"],
                timestep=sigma, guidance=inputs["guidance"], img_ids=img_ids(H, W), txt_ids=torch.zeros(5, 3))
    boxes = [tuple(i["box"]) for i in LAYOUT["instances"]]
    with torch.no_grad():
        v = ia_oracle.forward(m, weights, boxes, inputs["caption"], feed, H, W, list(rows))
    return x - sigma[:, None, None, None] * unpack(v, 2 * H, 2 * W)


def test_comfyui_host_matches_the_oracle(ia_run):
    model, weights, lora_file, inputs, outs, _ = ia_run
    want = _oracle(model, weights, lora_file, inputs)
    got, vanilla = outs["ia_cond"], outs["vanilla"]
    assert float((want - vanilla).abs().max()) > 1e-2                           # the branch acts
    assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())
    # the [uncond | cond] batch: the uncond chunk is untouched, the cond chunk composed
    torch.testing.assert_close(outs["ia_batched"][:1], vanilla, rtol=0, atol=1e-5)
    assert float((outs["ia_batched"][1:] - want).abs().max()) <= 1e-5


def test_outside_the_grounding_window_is_plain_flux(ia_run):
    outs = ia_run[4]
    assert torch.equal(outs["late_ia"], outs["late_vanilla"])                # step 10 of 28 >= int(0.3 * 28)


# --- end to end through a running server's /prompt -------------------------------------------------------


def _prompt(work: Path, layout_json: str) -> dict:
    save = lambda name, node: {"class_type": "RefCompTestSave",                         # noqa: E731
                               "inputs": {"path": str(work / f"{name}.safetensors"), "samples": [node, 0]}}
    ks = lambda model: {"class_type": "KSampler", "inputs": {                            # noqa: E731
        "model": [model, 0], "seed": 7, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    apply = lambda strength: {"class_type": "RefCompApplyFLUX", "inputs": {             # noqa: E731
        "model": ["1", 0], "refcomp_model": ["5", 0], "instances": ["8", 0], "strength": strength,
        "layout_start_percent": 0.0, "layout_end_percent": 0.3, "modulation_start_percent": 0.0,
        "modulation_end_percent": 1.0, "apply_to_uncond": False, "mask_margin": 1.0}}
    return {
        "1": {"class_type": "RefCompTestTinyFlux", "inputs": {"path": str(work / "flux.safetensors")}},
        "2": {"class_type": "RefCompTestCond", "inputs": {"seed": 1, "tokens": 5}},
        "3": {"class_type": "RefCompTestCond", "inputs": {"seed": 2, "tokens": 5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "5": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": "ia_tiny.safetensors", "dtype": "fp32"}},
        "6": {"class_type": "RefCompLayoutCanvas", "inputs": {"layout_json": layout_json, "width": 128,
                                                              "height": 96, "num_refs": 0}},
        "7": {"class_type": "RefCompTestClip", "inputs": {"dim": 20}},
        "8": {"class_type": "RefCompInstanceEncode", "inputs": {"layout": ["6", 0], "clip": ["7", 0]}},
        "9": ks("1"), "10": save("vanilla", "9"),
        "11": apply(1.0), "12": ks("11"), "13": save("ia", "12"),
        "14": apply(0.0), "15": ks("14"), "16": save("off", "15"),
    }


def test_end_to_end_through_http_prompt(comfy_env, comfy_root, tmp_path):
    """Caption-only boxes, the converted file from models/refcomp, no references or vision encoders,
    FLUX.1-schnell-like 4 steps (one grounding step), queued through POST /prompt."""
    converted, _, _ = _release(tmp_path)
    model = tiny_diffusers_flux(seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "flux.safetensors"))
    (comfy_root / "models" / "refcomp").mkdir(parents=True, exist_ok=True)
    shutil.copy(converted, comfy_root / "models" / "refcomp" / "ia_tiny.safetensors")
    with Server(comfy_env, comfy_root, tmp_path / "server.log") as server:
        status = server.run(_prompt(tmp_path, json.dumps(LAYOUT)))
        assert status["status_str"] == "success", (status, server.log()[-3000:])
    vanilla, ia, off = (load_file(str(tmp_path / f"{n}.safetensors"))["t"] for n in ("vanilla", "ia", "off"))
    assert torch.isfinite(ia).all() and ia.shape == vanilla.shape == (1, 16, 12, 16)
    assert float((ia - vanilla).abs().max()) > 1e-3                 # real layout from the converted weights
    assert torch.equal(off, vanilla)                                # strength 0 = plain FLUX, exactly
    assert "without RefComp's model wrapper" not in (tmp_path / "server.log").read_text()
