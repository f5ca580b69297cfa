"""XVerse in a real ComfyUI 0.29 from a converted released-format file: against the naive peft oracle
(tests/xverse_blocks/xverse_oracle.py) alone, and composed with InstanceAssemble against the diffusers
host (itself exact against both oracles). Skipped loudly without COMFYUI_PATH/COMFYUI_PYTHON."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_harness import run_driver
from comfy_tiny import TINY_DIFFUSERS, img_ids, pack, tiny_diffusers_flux, unpack

TESTS = Path(__file__).resolve().parents[1]
for sub in ("xverse", "xverse_blocks", "ia"):
    sys.path.insert(0, str(TESTS / sub))
import xverse_oracle  # noqa: E402
import xv_files  # noqa: E402
from ia_files import lora_tensors as ia_lora, write_layout_pth, write_lora as write_ia_lora  # noqa: E402
from refcomp_core import Controls, InstanceFeatures, RefCompSession, build_state, parse_layout  # noqa: E402
from refcomp_core.checkpoint import load_adapter  # noqa: E402
from refcomp_core.hosts.diffusers_flux import patch_flux  # noqa: E402
from refcomp_core.released import instanceassemble, xverse  # noqa: E402
from refcomp_core.xverse.compose import XVerseReference, build_run  # noqa: E402
from refcomp_core.xverse.presets import XVersePreset, reference_position_ids  # noqa: E402
from refcomp_core.xverse.resampler import offsets  # noqa: E402
from refcomp_core.xverse.spans import bind_ids  # noqa: E402

pytestmark = pytest.mark.integration
H, W, L, TOKENS, COND = 6, 8, 8, 4, 32
BINDING = {"prompt": [5, 6, 7, 9, 8, 4], "captions": [[2, 6, 7], [8, 2]], "words": [[6, 7], [8]], "length": L,
           "refs": 2, "is_id": [0, 1], "lora_scale": 1.0, "cond_size": COND}
LAYOUT = {"version": 1, "width": 128, "height": 96, "instances": [
    {"box": [0.0, 0.0, 0.625, 0.5], "caption": "a cat"}, {"box": [0.25, 0.25, 1.0, 1.0], "caption": "a tree"}]}


def write_xverse_work(work: Path):
    """The tiny FLUX, converted XVerse and InstanceAssemble files, layout, inputs and binding in `work`.
    -> (model, XVerse LoRA modules, inputs)"""
    model = tiny_diffusers_flux(seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "flux.safetensors"))
    xv_files.write_adapter(work / "modulation_adapter")
    modules = xv_files.lora_tensors(TINY_DIFFUSERS, rank=2)
    xv_files.write_lora(work / "lora.safetensors", modules)
    spec = instanceassemble.TargetSpec.from_diffusers_config(TINY_DIFFUSERS)
    xverse.convert(adapter_dir=work / "modulation_adapter", lora=work / "lora.safetensors",
                   out=work / "xverse.safetensors", spec=spec, in_channels=TINY_DIFFUSERS["in_channels"])
    write_layout_pth(work / "layout.pth", TINY_DIFFUSERS, scale=0.3)
    write_ia_lora(work / "ia_lora.safetensors", ia_lora(TINY_DIFFUSERS, rank=2), "peft")
    instanceassemble.convert(layout=work / "layout.pth", lora=work / "ia_lora.safetensors",
                             out=work / "ia.safetensors", spec=spec)
    (work / "layout.json").write_text(json.dumps(LAYOUT))
    g = torch.Generator().manual_seed(5)
    cfg = xv_files.TINY_CONFIG
    inputs = dict(x=torch.randn(1, 16, 2 * H, 2 * W, generator=g), sigma=torch.full((1,), 0.8),
                  context=torch.randn(1, L, 24, generator=g), pooled=torch.randn(1, 20, generator=g),
                  guidance=torch.full((1,), 3.5), schedule=torch.linspace(1.0, 0.0, 29),
                  caption=torch.randn(2, 20, generator=g))
    for i in range(2):
        inputs[f"txt{i}"] = torch.randn(1, L, cfg["input_text_dim"], generator=g)
        inputs[f"img{i}"] = torch.randn(1, 5, cfg["input_image_dim"], generator=g)
        inputs[f"lat{i}"] = torch.randn(TOKENS, TINY_DIFFUSERS["in_channels"], generator=g)
    save_file(inputs, str(work / "inputs.safetensors"))
    (work / "binding.json").write_text(json.dumps(BINDING))
    return model, modules, inputs


@pytest.fixture(scope="module")
def xv_run(comfy_env, comfy_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("xverse_parity")
    model, modules, inputs = write_xverse_work(work)
    run_driver(comfy_env, comfy_root, work, "xverse_parity")
    return model, modules, inputs, work, load_file(str(work / "outputs.safetensors"))


def _xv_inputs(work, inputs):
    adapter, _ = xverse.load_xverse(work / "xverse.safetensors")
    binding = bind_ids(BINDING["prompt"], BINDING["captions"], BINDING["words"], length=L)
    with torch.no_grad():
        outs = [offsets(adapter, inputs[f"txt{i}"], inputs[f"img{i}"]) for i in range(2)]
        shared, per_block = binding.gather(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]))
    ids = torch.cat([reference_position_ids(i, COND) for i in range(2)])
    return adapter, binding, dict(delta_shared=shared, delta_block=per_block[:, :2].transpose(0, 1),
                                  mask=binding.delta_mask, text_cond=binding.text_cond_mask,
                                  ref_latents=torch.cat([inputs["lat0"], inputs["lat1"]]), ref_ids=ids,
                                  lam=torch.tensor([5.0, 3.0]))


def _feed(inputs, sigma):
    return dict(hidden_states=pack(inputs["x"]), encoder_hidden_states=inputs["context"],
                pooled_projections=inputs["pooled"], timestep=sigma, guidance=inputs["guidance"],
                img_ids=img_ids(H, W), txt_ids=torch.zeros(L, 3))


def _denoised(inputs, v, sigma):
    return inputs["x"] - sigma[:, None, None, None] * unpack(v, 2 * H, 2 * W)


def test_comfyui_host_matches_the_oracle(xv_run):
    model, modules, inputs, work, outs = xv_run
    _, _, xv = _xv_inputs(work, inputs)
    peft = {f"transformer.{m}.lora_{x}.weight": t.clone() for m, (a, b, _) in modules.items()
            if not m.startswith("single_transformer_blocks") or not m.endswith(("norm.linear", "proj_mlp"))
            for x, t in (("A", a), ("B", b))}
    oracle = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    sigma, early = inputs["sigma"], torch.full((1,), float(inputs["schedule"][1]))
    with torch.no_grad():
        want = _denoised(inputs, xverse_oracle.forward(oracle, _feed(inputs, sigma), xv), sigma)
        skip = _denoised(dict(inputs), xverse_oracle.forward(oracle, _feed(inputs, early), xv, refs=False), early)
    assert float((want - outs["vanilla"]).abs().max()) > 1e-2
    assert float((outs["xv"] - want).abs().max()) <= 1e-5, float((outs["xv"] - want).abs().max())
    assert float((outs["xv_skip"] - skip).abs().max()) <= 1e-5               # t >= 0.95 t0: no references
    torch.testing.assert_close(outs["xv_batched"][:1], outs["vanilla"], rtol=0, atol=1e-5)   # uncond untouched
    assert float((outs["xv_batched"][1:] - want).abs().max()) <= 1e-5


def test_composed_with_instanceassemble_matches_the_diffusers_host(xv_run):
    model, _, inputs, work, outs = xv_run
    adapter, binding, _ = _xv_inputs(work, inputs)
    ia, _ = load_adapter(work / "ia.safetensors")
    layout = parse_layout(LAYOUT)
    refs = [XVerseReference(txt=inputs[f"txt{i}"], img=inputs[f"img{i}"], latents=inputs[f"lat{i}"], is_id=i == 1)
            for i in range(2)]
    run = build_run(adapter, refs, binding, XVersePreset(name="test", lora_scale=1.0, cond_size=COND),
                    axes_dim=(4, 6, 6), theta=10000.0, num_double_blocks=2)
    session = RefCompSession(ia, build_state(ia, layout, InstanceFeatures(caption=inputs["caption"])), Controls(),
                             axes_dim=(4, 6, 6), step=0, num_steps=28, xverse=run, t0=1.0)
    m = copy.deepcopy(model)
    with torch.no_grad(), patch_flux(m, session):
        want = _denoised(inputs, m(**_feed(inputs, inputs["sigma"]))[0], inputs["sigma"])
    assert float((outs["both"] - outs["xv"]).abs().max()) > 1e-3                 # the layout branch acts too
    assert float((outs["both"] - want).abs().max()) <= 1e-5, float((outs["both"] - want).abs().max())


# --- end to end through a running server's /prompt ---------------------------------------------------------

E2E_LAYOUT = {"version": 1, "width": 128, "height": 96, "instances": [
    {"box": [0.0, 0.25, 0.45, 1.0], "ref": 0, "caption": "a cat", "depth": "fg", "alpha": None},
    {"box": [0.55, 0.25, 1.0, 1.0], "ref": 1, "caption": "a dog", "depth": None, "alpha": 0.8},
    {"box": [0.0, 0.0, 1.0, 0.3], "ref": None, "caption": "a garden", "depth": "bg", "alpha": None}]}


def _e2e_prompt(work: Path) -> dict:
    save = lambda name, node: {"class_type": "RefCompTestSave",                         # noqa: E731
                               "inputs": {"path": str(work / f"{name}.safetensors"), "samples": [node, 0]}}
    ks = lambda model, positive: {"class_type": "KSampler", "inputs": {                  # noqa: E731
        "model": [model, 0], "seed": 7, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": positive, "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    apply = lambda **links: {"class_type": "RefCompApplyFLUX", "inputs": {                # noqa: E731
        "model": ["1", 0], "strength": 1.0, "layout_start_percent": 0.0, "layout_end_percent": 0.3,
        "modulation_start_percent": 0.0, "modulation_end_percent": 1.0, "apply_to_uncond": False, "mask_margin": 1.0,
        **links}}
    return {
        "1": {"class_type": "RefCompTestTinyFlux", "inputs": {"path": str(work / "flux.safetensors")}},
        "3": {"class_type": "RefCompTestCond", "inputs": {"seed": 2, "tokens": 5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "5": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": "xverse_tiny.safetensors", "dtype": "fp32",
                                                        "model": ["1", 0]}},
        "6": {"class_type": "RefCompLoader", "inputs": {"ckpt_name": "ia_tiny.safetensors", "dtype": "fp32"}},
        "7": {"class_type": "RefCompLoadReferenceSet", "inputs": {
            "folder": "xverse_refs", "mask_meaning": "mask marks the background (Load Image alpha)"}},
        "8": {"class_type": "RefCompLayoutCanvas", "inputs": {"layout_json": json.dumps(E2E_LAYOUT), "width": 128,
                                                              "height": 96, "num_refs": 2, "references": ["7", 0]}},
        "9": {"class_type": "RefCompTestT5Clip", "inputs": {"t5_dim": 24, "pooled_dim": 20}},
        "10": {"class_type": "RefCompTestPenultimateVision", "inputs": {"dim": 12, "tokens": 5}},
        "11": {"class_type": "RefCompTestVae", "inputs": {}},
        "12": {"class_type": "RefCompXVerseEncode", "inputs": {
            "xverse_model": ["5", 0], "layout": ["8", 0], "references": ["7", 0], "clip": ["9", 0],
            "clip_vision": ["10", 0], "vae": ["11", 0], "prompt": "a cat and a dog in a garden", "preset": "demo",
            "id_refs": "", "confine": False}},
        "13": {"class_type": "RefCompInstanceEncode", "inputs": {"layout": ["8", 0], "references": ["7", 0],
                                                                 "clip": ["9", 0], "refcomp_model": ["6", 0]}},
        "14": ks("1", ["12", 0]), "15": save("vanilla", "14"),
        "16": apply(xverse=["12", 1]), "17": ks("16", ["12", 0]), "18": save("xverse", "17"),
        "19": apply(refcomp_model=["6", 0], instances=["13", 0], xverse=["12", 1]), "20": ks("19", ["12", 0]),
        "21": save("both", "20"),
        "22": apply(refcomp_model=["6", 0], instances=["13", 0]), "23": ks("22", ["12", 0]), "24": save("ia", "23"),
    }


def test_combined_workflow_end_to_end_through_http_prompt(comfy_env, comfy_root, tmp_path):
    """XVerse alone, InstanceAssemble alone and both, from converted tiny files in models/refcomp, two
    identity reference boxes and a caption-only box, queued through POST /prompt of a running server."""
    from PIL import Image

    from comfy_harness import Server
    spec = instanceassemble.TargetSpec.from_diffusers_config(TINY_DIFFUSERS)
    xv_files.write_adapter(tmp_path / "modulation_adapter")
    xv_files.write_lora(tmp_path / "lora.safetensors", xv_files.lora_tensors(TINY_DIFFUSERS, rank=2))
    models = comfy_root / "models" / "refcomp"
    models.mkdir(parents=True, exist_ok=True)
    xverse.convert(adapter_dir=tmp_path / "modulation_adapter", lora=tmp_path / "lora.safetensors",
                   out=models / "xverse_tiny.safetensors", spec=spec, in_channels=TINY_DIFFUSERS["in_channels"])
    write_layout_pth(tmp_path / "layout.pth", TINY_DIFFUSERS, scale=0.3)
    write_ia_lora(tmp_path / "ia_lora.safetensors", ia_lora(TINY_DIFFUSERS, rank=2), "peft")
    instanceassemble.convert(layout=tmp_path / "layout.pth", lora=tmp_path / "ia_lora.safetensors",
                             out=models / "ia_tiny.safetensors", spec=spec)
    save_file({k: v.contiguous() for k, v in tiny_diffusers_flux(seed=1).state_dict().items()},
              str(tmp_path / "flux.safetensors"))
    refs = comfy_root / "input" / "xverse_refs"
    refs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 90, 10)).save(refs / "a_cat.png")
    Image.new("RGB", (24, 48), (30, 60, 220)).save(refs / "b_dog.png")
    with Server(comfy_env, comfy_root, tmp_path / "server.log") as server:
        status = server.run(_e2e_prompt(tmp_path))
        assert status["status_str"] == "success", (status, server.log()[-4000:])
    out = {n: load_file(str(tmp_path / f"{n}.safetensors"))["t"] for n in ("vanilla", "xverse", "both", "ia")}
    assert all(torch.isfinite(t).all() for t in out.values())
    assert float((out["xverse"] - out["vanilla"]).abs().max()) > 1e-3          # identity references act
    assert float((out["both"] - out["xverse"]).abs().max()) > 1e-3             # and the layout on top
    assert float((out["both"] - out["ia"]).abs().max()) > 1e-3
    assert "XVerse: 2 identity reference(s) ['cat', 'dog']" in server.log()
