"""Stage 1 warm-started from converted InstanceAssemble weights: the identity pathway is added on top,
freshly initialised, so the adapter reproduces InstanceAssemble before training, and the stages train
the layout pathway (stage 1) and then identity (stage 2) from there."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ia"))
from ia_files import lora_tensors, write_layout_pth, write_lora  # noqa: E402
from refcomp_core import Controls, InstanceFeatures, RefCompSession, build_state, parse_layout  # noqa: E402
from refcomp_core.checkpoint import add_identity, load_adapter, read_info  # noqa: E402
from refcomp_core.hosts.diffusers_flux import patch_flux  # noqa: E402
from refcomp_core.released.instanceassemble import TargetSpec, convert  # noqa: E402
from test_train import changed, train  # noqa: E402


def _converted(workdir) -> Path:
    config = json.loads((workdir / "tiny" / "flux" / "transformer" / "config.json").read_text())
    write_layout_pth(workdir / "layout.pth", config)
    write_lora(workdir / "lora.safetensors", lora_tensors(config, rank=2), "peft")
    out = workdir / "ia.safetensors"
    convert(layout=workdir / "layout.pth", lora=workdir / "lora.safetensors", out=out,
            spec=TargetSpec.from_diffusers_config(config))
    return out


def test_added_identity_reproduces_instanceassemble_on_any_layout(workdir):
    from diffusers import FluxTransformer2DModel

    from helpers import flux_inputs
    ia_file = _converted(workdir)
    ia, _ = load_adapter(ia_file)
    torch.manual_seed(0)
    fused, _ = add_identity(ia_file, clip_dim=12, dino_dim=10, visual_dim=10, alpha_hidden=8)
    assert fused.config.identity and {"alpha", "modulation", "bridge", "single_gate"} <= set(fused.namespaces)
    layout = parse_layout({"version": 1, "width": 64, "height": 64, "instances": [
        {"box": [0.0, 0.0, 0.6, 0.5], "ref": 0, "caption": "a cat", "alpha": 0.9},        # FG: modulation runs
        {"box": [0.3, 0.2, 1.0, 1.0], "ref": 1, "caption": "a tree"},                      # predicted alpha 0.5
        {"box": [0.5, 0.5, 0.9, 0.9], "caption": None}]}, num_refs=2)
    g = torch.Generator().manual_seed(1)
    feats = InstanceFeatures(clip_image=torch.randn(2, 12, generator=g), dino=torch.randn(2, 10, generator=g),
                             caption=torch.randn(3, 20, generator=g))
    model = FluxTransformer2DModel.from_pretrained(workdir / "tiny" / "flux", subfolder="transformer").eval()
    inputs = flux_inputs(model, batch=1, h=4, w=4)

    def run(adapter):
        state = build_state(adapter, layout, feats)
        session = RefCompSession(adapter, state, Controls(), axes_dim=(4, 6, 6), step=0, num_steps=28)
        with torch.no_grad(), patch_flux(model, session):
            return model(**inputs)[0], state

    (want, _), (got, state) = run(ia.eval()), run(fused.eval())
    with torch.no_grad():
        vanilla = model(**inputs)[0]
    assert state.n_fg == 2 and float((want - vanilla).abs().max()) > 1e-3
    assert float((got - want).abs().max()) <= 1e-5


def test_stage_one_from_converted_weights_then_stage_two(workdir):
    ia_file = _converted(workdir)
    assert train(workdir, 1, f"init_from={ia_file}") == 0
    s1 = workdir / "run1" / "refcomp-stage1.safetensors"
    info = read_info(s1)
    assert info.config.layout_pathway == "instanceassemble" and info.config.identity and info.stage == 1
    before = load_file(ia_file)
    after = load_file(s1)
    shared = {k: after[k] for k in before}
    assert changed(before, shared) == {"encoder", "lora", "assemble_gate"}        # the released pathway trained
    assert {k.split(".")[0] for k in after} - {k.split(".")[0] for k in before} >= {"modulation", "bridge"}
    assert train(workdir, 2) == 0
    s2 = workdir / "run2" / "refcomp-stage2.safetensors"
    assert {"modulation", "single_gate"} <= changed(load_file(s1), load_file(s2))
