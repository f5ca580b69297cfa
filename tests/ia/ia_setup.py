"""Shared set-up of the InstanceAssemble pathway tests: a tiny random diffusers FLUX with 4 double
blocks, released-format files converted by `refcomp convert`'s function, a layout, inputs."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from helpers import flux_inputs
from ia_files import IA_TINY_FLUX, lora_tensors, write_layout_pth, write_lora
from refcomp_core import InstanceFeatures, parse_layout
from refcomp_core.checkpoint import load_adapter
from refcomp_core.released.instanceassemble import TargetSpec, convert

H, W = 12, 16                          # 192 x 256 px, not square on purpose
BOXES_PX = [(0, 0, 128, 96), (64, 32, 256, 192), (32, 48, 160, 144), (96, 0, 112, 192), (240, 176, 256, 192)]


def ia_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**IA_TINY_FLUX).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def layout_of(boxes_px=BOXES_PX, width: int = W * 16, height: int = H * 16):
    inst = [{"box": [x0 / width, y0 / height, x1 / width, y1 / height], "caption": f"thing {i}"}
            for i, (x0, y0, x1, y1) in enumerate(boxes_px)]
    return parse_layout({"version": 1, "width": width, "height": height, "instances": inst})


@dataclass
class IASetup:
    model: nn.Module              # the base transformer (never patched in place)
    layout_weights: dict
    lora: dict
    lora_file: Path
    adapter_file: Path
    adapter: nn.Module
    inputs: dict

    def copy_model(self):
        return copy.deepcopy(self.model)

    def features(self, layout, seed: int = 3) -> InstanceFeatures:
        g = torch.Generator().manual_seed(seed)
        text = IA_TINY_FLUX["pooled_projection_dim"]
        return InstanceFeatures(caption=torch.randn(len(layout.instances), text, generator=g))


def make_setup(tmp_path: Path, *, form: str = "peft", alpha: float | None = None, rank: int = 4,
               batch: int = 2, layout_scale: float = 0.2) -> IASetup:
    model = ia_flux()
    layout_path, lora_path, out = tmp_path / "layout.pth", tmp_path / "lora.safetensors", tmp_path / "ia.safetensors"
    weights = write_layout_pth(layout_path, IA_TINY_FLUX, scale=layout_scale)
    lora = lora_tensors(IA_TINY_FLUX, rank=rank, alpha=alpha)
    write_lora(lora_path, lora, form)
    convert(layout=layout_path, lora=lora_path, out=out, spec=TargetSpec.from_diffusers_config(IA_TINY_FLUX))
    adapter, _ = load_adapter(out)
    return IASetup(model=model, layout_weights=weights, lora=lora, lora_file=lora_path, adapter_file=out,
                   adapter=adapter.eval(), inputs=flux_inputs(model, batch=batch, h=H, w=W))


def attach_layout_forward(model, weights: dict) -> None:
    """The oracle model gets IA's `layout_forward` linears, loaded straight from layout.pth."""
    d = model.config.num_attention_heads * model.config.attention_head_dim
    for prefix, blocks in (("transformer_blocks", model.transformer_blocks),
                           ("single_transformer_blocks", model.single_transformer_blocks)):
        for i, block in enumerate(blocks):
            key = f"{prefix}.{i}.layout_forward"
            if f"{key}.weight" in weights:
                block.layout_forward = nn.Linear(d, d)
                with torch.no_grad():
                    block.layout_forward.weight.copy_(weights[f"{key}.weight"].float())
                    block.layout_forward.bias.copy_(weights[f"{key}.bias"].float())
