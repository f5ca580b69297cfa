"""Real-ComfyUI integration tests (skipped loudly without COMFYUI_PATH / COMFYUI_PYTHON).

ComfyUI runs in its own venv through tests/comfy/driver.py; this side (the main venv)
builds the tiny diffusers FLUX, the adapters and the inputs, and asserts on the results.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import TINY_ADAPTER, randomize
from refcomp_core import Controls, RefCompAdapter, RefCompSession, build_state, parse_layout
from refcomp_core.checkpoint import save_adapter
from refcomp_core.config import RefCompConfig
from refcomp_core.hosts.diffusers_flux import config_for
from refcomp_core.state import InstanceFeatures

from comfy_harness import run_driver
from comfy_tiny import diffusers_denoised, tiny_diffusers_flux

pytestmark = pytest.mark.integration

LAYOUT = {"version": 1, "width": 256, "height": 192, "instances": [
    {"box": [0.05, 0.1, 0.55, 0.7], "ref": 0, "caption": "a red chair", "depth": "fg", "alpha": None},
    {"box": [0.4, 0.3, 0.95, 0.95], "ref": 1, "caption": None, "depth": "bg", "alpha": 0.2},
    {"box": [0.0, 0.0, 1.0, 0.4], "ref": None, "caption": "blue sky", "depth": None, "alpha": None},
    {"box": [0.6, 0.05, 0.9, 0.5], "ref": 2, "caption": "a lamp", "depth": "mg", "alpha": 0.9},
]}


def _adapters(model):
    torch.manual_seed(0)
    fresh = RefCompAdapter(config_for(model, **TINY_ADAPTER)).eval()
    torch.manual_seed(0)
    rand = randomize(RefCompAdapter(config_for(model, **TINY_ADAPTER)).eval(), seed=3, scale=0.3)
    return fresh, rand


def test_pack_loads_and_lists_nodes(object_info_run):
    res, info = object_info_run
    assert res["pack_loaded"] is True
    expected = ["RefCompAlphaPredictor", "RefCompApplyFLUX", "RefCompInstanceEncode", "RefCompLayoutCanvas",
                "RefCompLayoutPreview", "RefCompLoadReferenceSet", "RefCompLoader", "RefCompXVerseEncode"]
    assert res["refcomp_nodes"] == expected
    assert any(p.endswith("models/refcomp") for p in res["refcomp_folder"])
    for name in expected:
        node = info[name]
        assert node["category"].startswith("RefComp") and node["description"]
        inputs = {**node["inputs"]["required"], **node["inputs"]["optional"]}
        assert inputs, name
        for key, (_type, opts) in inputs.items():
            assert opts.get("tooltip"), f"{name}.{key} has no tooltip"
    assert res["rope_max_err"] < 1e-5                 # canonical Rope == ComfyUI's apply_rope
    assert res["percent_max_err"] < 1e-6              # sigma -> schedule percent inverts percent_to_sigma
    canvas = info["RefCompLayoutCanvas"]["inputs"]["required"]
    assert canvas["layout_json"][0] == "STRING"
    assert info["RefCompApplyFLUX"]["outputs"] == ["MODEL"]
    apply_inputs = info["RefCompApplyFLUX"]["inputs"]
    assert [t for t, _ in apply_inputs["required"].values()][0] == "MODEL"
    assert {"REFCOMP_MODEL", "REFCOMP_INSTANCES", "REFCOMP_XVERSE"} <= {t for t, _ in apply_inputs["optional"].values()}


def write_parity_work(work: Path):
    """The tiny FLUX, a fresh, a random and a wrong-size adapter, inputs (with a 28-step schedule) and the
    layout in `work`.  -> (model, fresh adapter, random adapter, inputs)"""
    model = tiny_diffusers_flux(seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "flux.safetensors"))
    fresh, rand = _adapters(model)
    save_adapter(work / "adapter_fresh.safetensors", fresh)
    save_adapter(work / "adapter_random.safetensors", rand)
    save_adapter(work / "adapter_wrong.safetensors",
                 RefCompAdapter(RefCompConfig.for_model(hidden_size=64, num_double_blocks=2, num_single_blocks=2,
                                                        num_heads=4, **TINY_ADAPTER)))
    g = torch.Generator().manual_seed(5)
    inputs = dict(x=torch.randn(2, 16, 12, 16, generator=g), sigma=torch.full((2,), 0.8),
                  context=torch.randn(2, 5, 24, generator=g), pooled=torch.randn(2, 20, generator=g),
                  guidance=torch.full((2,), 3.5), clip=torch.randn(3, 12, generator=g),
                  dino=torch.randn(3, 10, generator=g), caption=torch.randn(4, 8, generator=g))
    save_file({**inputs, "schedule": torch.linspace(1.0, 0.0, 29)}, str(work / "inputs.safetensors"))
    (work / "layout.json").write_text(json.dumps(LAYOUT))
    return model, fresh, rand, inputs


@pytest.fixture(scope="module")
def parity_run(comfy_env, comfy_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("parity")
    model, fresh, rand, inputs = write_parity_work(work)
    res = run_driver(comfy_env, comfy_root, work, "parity")
    outs = load_file(str(work / "outputs.safetensors"))
    return model, fresh, rand, inputs, outs, res


def _close(a, b, tol=2e-4):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def test_conversion_matches_diffusers(parity_run):
    model, _, _, inp, outs, _ = parity_run
    ref = diffusers_denoised(model, inp["x"], inp["sigma"], inp["context"], inp["pooled"], inp["guidance"])
    assert _close(outs["vanilla"], ref), (outs["vanilla"] - ref).abs().max()


def test_fresh_adapter_leaves_output_unchanged(parity_run):
    _, _, _, _, outs, res = parity_run
    for key in ("fresh_cond_cond", "fresh_all_cond", "fresh_all_uncond_alone"):
        assert _close(outs[key], outs["vanilla"], tol=1e-5), key
    assert res["patches_on_input_model"] == 0          # the input MODEL was cloned, never mutated


def test_parity_with_diffusers_host(parity_run):
    model, _, rand, inp, outs, _ = parity_run
    layout = parse_layout(LAYOUT, num_refs=3)
    feats = InstanceFeatures(clip_image=inp["clip"], dino=inp["dino"], caption=inp["caption"])
    with torch.no_grad():
        session = RefCompSession(rand, build_state(rand, layout, feats), Controls(layout_window=(0.0, 1.0)))
    ref = diffusers_denoised(model, inp["x"], inp["sigma"], inp["context"], inp["pooled"], inp["guidance"], session)
    assert not _close(ref, outs["vanilla"], tol=1e-3), "the random adapter must change the output"
    assert _close(outs["random_cond_cond"], ref), (outs["random_cond_cond"] - ref).abs().max()


def test_uncond_chunks_untouched(parity_run):
    _, _, _, _, outs, res = parity_run
    b = res["batch"]
    vanilla, composed = outs["vanilla"], outs["random_cond_cond"]
    batched = outs["random_cond_batched"]                   # chunks [uncond | cond]
    assert torch.equal(batched[:b], vanilla) or _close(batched[:b], vanilla, tol=1e-6)
    assert _close(batched[b:], composed)
    assert _close(outs["random_cond_uncond_alone"], vanilla, tol=1e-6)
    # apply_to_uncond composes both chunks
    assert _close(outs["random_all_batched"][:b], composed)
    assert _close(outs["random_all_uncond_alone"], composed)


def _sample_prompt(work, layout_json: str) -> dict:
    save = lambda name, **src: {"class_type": "RefCompTestSave",                       # noqa: E731
                                "inputs": {"path": str(work / f"{name}.safetensors"), **src}}
    ks = lambda model: {"class_type": "KSampler", "inputs": {                          # noqa: E731
        "model": [model, 0], "seed": 7, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    apply = lambda ckpt, inst, end: {"class_type": "RefCompApplyFLUX", "inputs": {    # noqa: E731
        "model": ["1", 0], "refcomp_model": [ckpt, 0], "instances": [inst, 0], "strength": 1.0,
        "layout_start_percent": 0.0, "layout_end_percent": end, "modulation_start_percent": 0.0,
        "modulation_end_percent": 1.0, "apply_to_uncond": False, "mask_margin": 1.0}}
    return {
        "1": {"class_type": "RefCompTestTinyFlux", "inputs": {"path": str(work / "flux.safetensors")}},
        "2": {"class_type": "RefCompTestCond", "inputs": {"seed": 1, "tokens": 5}},
        "3": {"class_type": "RefCompTestCond", "inputs": {"seed": 2, "tokens": 5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 72, "height": 64, "batch_size": 2}},
        "5": ks("1"), "6": save("vanilla", samples=["5", 0]),
        "7": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": "fresh.safetensors", "dtype": "fp32"}},
        "8": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": "random.safetensors", "dtype": "fp32"}},
        "9": {"class_type": "RefCompLoadReferenceSet", "inputs": {
            "folder": "refs_test", "mask_meaning": "mask marks the background (Load Image alpha)"}},
        "10": {"class_type": "RefCompLayoutCanvas", "inputs": {"layout_json": layout_json, "width": 1024,
                                                               "height": 1024, "num_refs": 0, "references": ["9", 0]}},
        "11": {"class_type": "RefCompTestVision", "inputs": {"dim": 12, "name": "clip"}},
        "12": {"class_type": "RefCompTestVision", "inputs": {"dim": 10, "name": "dino"}},
        "13": {"class_type": "RefCompTestClip", "inputs": {"dim": 8}},
        "14": {"class_type": "RefCompInstanceEncode", "inputs": {"layout": ["10", 0], "references": ["9", 0],
                                                                 "clip_vision": ["11", 0], "dino": ["12", 0],
                                                                 "clip": ["13", 0]}},
        "15": {"class_type": "RefCompAlphaPredictor", "inputs": {
            "instances": ["14", 0], "mode": "predicted", "refcomp_model": ["8", 0], "fg_alpha": 0.8,
            "mg_alpha": 0.3, "bg_alpha": 0.0, "overrides": "1: 0.2"}},
        "16": apply("7", "14", 0.3), "17": ks("16"), "18": save("fresh", samples=["17", 0]),
        "19": apply("8", "15", 1.0), "20": ks("19"), "21": save("random", samples=["20", 0]),
        "22": {"class_type": "RefCompLayoutPreview", "inputs": {"instances": ["15", 0], "refcomp_model": ["8", 0]}},
        "23": save("preview", image=["22", 0]),
    }


def test_executor_samples_through_apply(comfy_env, comfy_root, tmp_path):
    from PIL import Image

    model = tiny_diffusers_flux(seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "flux.safetensors"))
    fresh, rand = _adapters(model)
    (tmp_path / "adapters").mkdir()
    save_adapter(tmp_path / "adapters" / "fresh.safetensors", fresh)
    save_adapter(tmp_path / "adapters" / "random.safetensors", rand)
    # the adapters live outside models/: found through extra_model_paths.yaml
    (tmp_path / "extra_model_paths.yaml").write_text(f"refcomp_test:\n  base_path: {tmp_path}\n  refcomp: adapters/\n")
    refs = comfy_root / "input" / "refs_test"
    refs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(refs / "b_chair.png")
    Image.new("RGBA", (32, 32), (10, 200, 10, 128)).save(refs / "a_plant.png")
    Image.new("RGB", (20, 50), (10, 10, 200)).save(refs / "c_lamp.webp")
    layout = {"version": 1, "width": 1024, "height": 1024, "instances": [
        {"box": [0.1, 0.1, 0.6, 0.7], "ref": 0, "caption": "a plant", "depth": "fg", "alpha": None},
        {"box": [0.3, 0.4, 0.9, 0.95], "ref": 1, "caption": None, "depth": "bg", "alpha": None},
        {"box": [0.0, 0.0, 1.0, 0.3], "ref": None, "caption": "sky", "depth": None, "alpha": None},
        {"box": [0.65, 0.05, 0.95, 0.5], "ref": 2, "caption": "a lamp", "depth": "mg", "alpha": 0.9}]}
    (tmp_path / "prompt.json").write_text(json.dumps(_sample_prompt(tmp_path, json.dumps(layout))))
    res = run_driver(comfy_env, comfy_root, tmp_path, "sample")
    assert res.get("valid"), res.get("validation")
    assert res.get("success"), (res.get("errors"), res["_stderr"][-3000:])
    assert "without RefComp's model wrapper" not in res["_stderr"]
    vanilla = load_file(str(tmp_path / "vanilla.safetensors"))["t"]
    fresh_out = load_file(str(tmp_path / "fresh.safetensors"))["t"]
    rand_out = load_file(str(tmp_path / "random.safetensors"))["t"]
    assert vanilla.shape == (2, 16, 8, 9) and torch.isfinite(vanilla).all()
    assert (fresh_out - vanilla).abs().max() < 1e-4                  # init invariant through the executor
    assert (rand_out - vanilla).abs().max() > 1e-3                   # a trained-looking adapter composes
    preview = load_file(str(tmp_path / "preview.safetensors"))["t"]
    assert preview.shape == (1, 1024, 1024, 3)


def test_clear_errors_for_wrong_checkpoint_and_double_apply(parity_run):
    errors = parity_run[5]["errors"]
    assert "hidden size 64" in errors["hidden"] and "hidden size 32" in errors["hidden"]
    assert "already has block replacements on double_block 0" in errors["twice"]


def test_kontext_reference_tokens(parity_run):
    outs = parity_run[4]
    assert not _close(outs["vanilla_kontext"], outs["vanilla"], tol=1e-4)     # the reference tokens matter
    assert _close(outs["fresh_kontext"], outs["vanilla_kontext"], tol=1e-5)
    assert torch.isfinite(outs["random_kontext"]).all()
    assert not _close(outs["random_kontext"], outs["vanilla_kontext"], tol=1e-3)
