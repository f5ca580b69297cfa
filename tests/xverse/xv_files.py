"""Random files in XVerse's exact released formats, at tiny width (WEIGHTS_COMPAT §2.2).

- `write_adapter`: `modulation_adapter/` = `config.json` (diffusers ConfigMixin keys) + the weights as
  `diffusion_pytorch_model.safetensors`, a sharded `.safetensors.index.json`, or a torch.save `.bin`;
- `write_lora`: `pytorch_lora_weights.safetensors`, PEFT keys with or without the `transformer.` prefix.
The key tables are written here from the facts, not taken from the code under test.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from helpers import TINY_FLUX

# hidden 32, 2 double + 2 single blocks, in_channels 16; widths of net and net2 differ on purpose
TINY_CONFIG = {"_class_name": "CLIPModAdapter", "_diffusers_version": "0.32.2", "out_dim": 32, "width": 16,
               "pblock_width": 24, "layers": 2, "pblock_layers": 1, "heads": 2, "input_text_dim": 24,
               "input_image_dim": 12, "pblock_single_blocks": 0}
# the values of the released config.json (from the yaml that built it, §2.2a)
REAL_CONFIG = {"out_dim": 3072, "width": 3072, "pblock_width": 3072, "layers": 3, "pblock_layers": 3, "heads": 8,
               "input_text_dim": 4096, "input_image_dim": 1024, "pblock_single_blocks": 0}
FLUX1 = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))

# §2.2b: the LoRA target modules, (in, out) in units of D = hidden, M = 4D, C = packed input channels
DOUBLE = {"norm1.linear": ("D", "6D"), "norm1_context.linear": ("D", "6D"), "attn.to_q": ("D", "D"),
          "attn.to_k": ("D", "D"), "attn.to_v": ("D", "D"), "attn.add_q_proj": ("D", "D"),
          "attn.add_k_proj": ("D", "D"), "attn.add_v_proj": ("D", "D"), "attn.to_out.0": ("D", "D"),
          "attn.to_add_out": ("D", "D"), "ff.net.2": ("M", "D"), "ff_context.net.2": ("M", "D")}
SINGLE = {"norm.linear": ("D", "3D"), "proj_mlp": ("D", "M"), "attn.to_q": ("D", "D"), "attn.to_k": ("D", "D"),
          "attn.to_v": ("D", "D"), "proj_out": ("D+M", "D")}
SINGLE_OFF = ("norm.linear", "proj_mlp")        # always multiplier 0 in XVerse (§2.6)


def adapter_shapes(config: dict, num_double: int) -> dict[str, tuple[int, ...]]:
    """§2.2a: every key of the adapter weights and its shape."""
    out = {}
    nets = (("net", config["width"], config["layers"], config["out_dim"]),
            ("net2", config["pblock_width"], config["pblock_layers"],
             config["out_dim"] * (num_double + config["pblock_single_blocks"])))
    for name, w, layers, o in nets:
        out[f"{name}.text_proj_in.weight"] = (w, config["input_text_dim"])
        out[f"{name}.text_proj_in.bias"] = (w,)
        out[f"{name}.image_proj_in.weight"] = (w, config["input_image_dim"])
        out[f"{name}.image_proj_in.bias"] = (w,)
        for i in range(layers):
            p = f"{name}.perceiver_blocks.{i}."
            out.update({p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                        p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                        p + "mlp.c_fc.weight": (4 * w, w), p + "mlp.c_fc.bias": (4 * w,),
                        p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,)})
            for ln in ("ln_1", "ln_2", "ln_ff"):
                out[f"{p}{ln}.linear.weight"] = (2 * w, 64)
                out[f"{p}{ln}.linear.bias"] = (2 * w,)
        out.update({f"{name}.proj_out.0.weight": (o, w), f"{name}.proj_out.0.bias": (o,),
                    f"{name}.proj_out.1.weight": (o,), f"{name}.proj_out.1.bias": (o,)})
    return out


def adapter_tensors(config: dict = TINY_CONFIG, num_double: int = TINY_FLUX["num_layers"], seed: int = 0,
                    dtype=torch.float32) -> OrderedDict:
    """Random weights (the AdaLN linears too: a zero-init release would hide their effect)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in adapter_shapes(config, num_double).items():
        scale = 0.5 if key.endswith(("proj_out.1.weight", "linear.bias")) else 0.3
        offset = 1.0 if key.endswith("proj_out.1.weight") else 0.0
        out[key] = (offset + scale * torch.randn(shape, generator=g)).to(dtype)
    return out


def write_adapter(folder: Path, *, config: dict = TINY_CONFIG, tensors: dict | None = None, fmt: str = "safetensors",
                  seed: int = 0) -> dict:
    """modulation_adapter/ in one of the formats diffusers writes: safetensors, sharded, bin."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(config, seed=seed) if tensors is None else tensors
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if fmt == "safetensors":
        save_file(dict(tensors), str(folder / "diffusion_pytorch_model.safetensors"))
    elif fmt == "bin":
        torch.save(OrderedDict(tensors), folder / "diffusion_pytorch_model.bin")
    elif fmt == "sharded":
        keys = list(tensors)
        shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, part in shards.items():
            save_file({k: tensors[k] for k in part}, str(folder / name))
        index = {"metadata": {"total_size": 0}, "weight_map": {k: n for n, part in shards.items() for k in part}}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    else:
        raise ValueError(fmt)
    return tensors


def lora_modules(flux: dict = TINY_FLUX) -> dict[str, tuple[int, int]]:
    """§2.2b: module path -> (in, out) of every module of XVerse's LoRA file."""
    d = flux["num_attention_heads"] * flux["attention_head_dim"]
    units = {"D": d, "3D": 3 * d, "6D": 6 * d, "M": 4 * d, "D+M": 5 * d}
    out = {"x_embedder": (flux["in_channels"], d)}
    for b in range(flux["num_layers"]):
        out.update({f"transformer_blocks.{b}.{m}": (units[i], units[o]) for m, (i, o) in DOUBLE.items()})
    for s in range(flux["num_single_layers"]):
        out.update({f"single_transformer_blocks.{s}.{m}": (units[i], units[o]) for m, (i, o) in SINGLE.items()})
    return out


def lora_tensors(flux: dict = TINY_FLUX, *, rank: int = 4, seed: int = 1, alpha: float | None = None
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """module -> (lora_A (r, in), lora_B (out, r), alpha); B non-zero so every LoRA acts."""
    g = torch.Generator().manual_seed(seed)
    return {m: (0.2 * torch.randn(rank, i, generator=g), 0.2 * torch.randn(o, rank, generator=g), alpha)
            for m, (i, o) in lora_modules(flux).items()}


def lora_file_keys(modules: dict, *, prefix: str = "transformer.", adapter_name: str | None = None
                   ) -> dict[str, torch.Tensor]:
    """PEFT / diffusers keys: `<prefix><module>.lora_A[.<adapter>].weight`, optional `<module>.alpha`."""
    tag = f".{adapter_name}" if adapter_name else ""
    out = {}
    for m, (a, b, alpha) in modules.items():
        out[f"{prefix}{m}.lora_A{tag}.weight"] = a
        out[f"{prefix}{m}.lora_B{tag}.weight"] = b
        if alpha is not None:
            out[f"{prefix}{m}.alpha"] = torch.tensor(float(alpha))
    return out


def write_lora(path: Path, modules: dict, **kw) -> None:
    save_file({k: v.clone() for k, v in lora_file_keys(modules, **kw).items()}, str(path))
