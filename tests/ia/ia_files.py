"""Random files in InstanceAssemble's exact released formats, at tiny width (WEIGHTS_COMPAT §1.2, §1.3).

- `write_layout_pth`: `layout.pth`, an OrderedDict of bf16 tensors saved with torch.save;
- `write_lora`: `pytorch_lora_weights.safetensors` in one of the key forms diffusers accepts.
The key tables are written here from the facts, not taken from the converter under test.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from helpers import TINY_FLUX

# 4 double blocks so layout blocks 0 and 3 have plain blocks between them (the layout tokens are carried)
IA_TINY_FLUX = {**TINY_FLUX, "num_layers": 4, "num_single_layers": 2}

DOUBLE = {"norm1.linear": ("D", "6D"), "norm1_context.linear": ("D", "6D"), "attn.to_q": ("D", "D"),
          "attn.to_k": ("D", "D"), "attn.to_v": ("D", "D"), "attn.add_q_proj": ("D", "D"),
          "attn.add_k_proj": ("D", "D"), "attn.add_v_proj": ("D", "D"), "attn.to_out.0": ("D", "D"),
          "attn.to_add_out": ("D", "D"), "ff.net.2": ("4D", "D"), "ff_context.net.2": ("4D", "D")}
SINGLE = {"norm.linear": ("D", "3D"), "attn.to_q": ("D", "D"), "attn.to_k": ("D", "D"), "attn.to_v": ("D", "D"),
          "proj_mlp": ("D", "4D"), "proj_out": ("5D", "D")}
# modules IA never switches on (dead weight in a LoRA file)
DEAD = {"ff.net.0.proj": ("D", "4D")}


def dims(config) -> dict[str, int]:
    d = config["num_attention_heads"] * config["attention_head_dim"]
    return {"D": d, "3D": 3 * d, "4D": 4 * d, "5D": 5 * d, "6D": 6 * d, "text": config["pooled_projection_dim"],
            "double": config["num_layers"], "single": config["num_single_layers"]}


def layout_tensors(config, seed: int = 0, scale: float = 0.2, dtype=torch.bfloat16) -> OrderedDict:
    n = dims(config)
    d = n["D"]
    g = torch.Generator().manual_seed(seed)
    shapes = {"layout_net.text_embedder.linear_1.weight": (d, n["text"]), "layout_net.text_embedder.linear_1.bias": (d,),
              "layout_net.text_embedder.linear_2.weight": (d, d), "layout_net.text_embedder.linear_2.bias": (d,),
              "layout_net.linears.linear_1.weight": (d // 2, d + 1152), "layout_net.linears.linear_1.bias": (d // 2,),
              "layout_net.linears.linear_2.weight": (d, d // 2), "layout_net.linears.linear_2.bias": (d,)}
    for i in range(0, n["double"], 3):
        shapes[f"transformer_blocks.{i}.layout_forward.weight"] = (d, d)
        shapes[f"transformer_blocks.{i}.layout_forward.bias"] = (d,)
    shapes["single_transformer_blocks.0.layout_forward.weight"] = (d, d)
    shapes["single_transformer_blocks.0.layout_forward.bias"] = (d,)
    return OrderedDict((k, (torch.randn(s, generator=g) * scale).to(dtype)) for k, s in shapes.items())


def write_layout_pth(path: Path, config, seed: int = 0, **kw) -> OrderedDict:
    tensors = layout_tensors(config, seed, **kw)
    torch.save(tensors, path)
    return tensors


def lora_modules(config, *, dead: bool = False) -> dict[str, tuple[int, int]]:
    """diffusers module path -> (in, out) of every module IA switches on (plus dead ones when asked)."""
    n = dims(config)
    out = {}
    for i in range(0, n["double"], 3):
        out.update({f"transformer_blocks.{i}.{m}": (n[a], n[b]) for m, (a, b) in DOUBLE.items()})
        if dead:
            out.update({f"transformer_blocks.{i}.{m}": (n[a], n[b]) for m, (a, b) in DEAD.items()})
    out.update({f"single_transformer_blocks.0.{m}": (n[a], n[b]) for m, (a, b) in SINGLE.items()})
    if dead:
        out["transformer_blocks.1.attn.to_q"] = (n["D"], n["D"])
        out["single_transformer_blocks.1.proj_out"] = (n["5D"], n["D"])
    return out


def lora_tensors(config, *, rank: int = 4, seed: int = 1, scale: float = 0.2, alpha: float | None = None,
                 dead: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """module -> (A (r, in), B (out, r), alpha). B is non-zero so every LoRA acts."""
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(rank, i, generator=g) * scale, torch.randn(o, rank, generator=g) * scale, alpha)
            for m, (i, o) in lora_modules(config, dead=dead).items()}


def to_file_keys(modules: dict, form: str) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file in one key form: peft, peft_bare, kohya, kohya_bfl."""
    out: dict[str, torch.Tensor] = {}
    if form == "kohya_bfl":
        return _kohya_bfl(modules)
    for m, (a, b, alpha) in modules.items():
        if form in ("peft", "peft_bare"):
            base = ("transformer." if form == "peft" else "") + m
            out[f"{base}.lora_A.weight"], out[f"{base}.lora_B.weight"] = a, b
        elif form == "kohya":
            base = "lora_unet_" + m.replace(".", "_")
            out[f"{base}.lora_down.weight"], out[f"{base}.lora_up.weight"] = a, b
        else:
            raise ValueError(form)
        if alpha is not None:
            out[f"{base}.alpha"] = torch.tensor(float(alpha))
    return out


def _kohya_bfl(modules: dict) -> dict[str, torch.Tensor]:
    """BFL names: q/k/v (and the single block's q/k/v/MLP input) fused row-wise with one down projection."""
    fused = {"attn.to_q": ("img_attn_qkv", 0), "attn.to_k": ("img_attn_qkv", 1), "attn.to_v": ("img_attn_qkv", 2),
             "attn.add_q_proj": ("txt_attn_qkv", 0), "attn.add_k_proj": ("txt_attn_qkv", 1),
             "attn.add_v_proj": ("txt_attn_qkv", 2)}
    plain = {"norm1.linear": "img_mod_lin", "norm1_context.linear": "txt_mod_lin", "attn.to_out.0": "img_attn_proj",
             "attn.to_add_out": "txt_attn_proj", "ff.net.2": "img_mlp_2", "ff_context.net.2": "txt_mlp_2"}
    single_fused = {"attn.to_q": 0, "attn.to_k": 1, "attn.to_v": 2, "proj_mlp": 3}
    single_plain = {"norm.linear": "modulation_lin", "proj_out": "linear2"}
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, tuple]] = {}
    for m, (a, b, alpha) in modules.items():
        kind, i, name = ("double", *m[len("transformer_blocks."):].split(".", 1)) if m.startswith("transformer_") \
            else ("single", *m[len("single_transformer_blocks."):].split(".", 1))
        if kind == "double" and name in fused:
            grp, pos = fused[name]
            groups.setdefault(f"lora_unet_double_blocks_{i}_{grp}", {})[pos] = (a, b, alpha)
        elif kind == "single" and name in single_fused:
            groups.setdefault(f"lora_unet_single_blocks_{i}_linear1", {})[single_fused[name]] = (a, b, alpha)
        else:
            base = f"lora_unet_double_blocks_{i}_{plain[name]}" if kind == "double" else \
                f"lora_unet_single_blocks_{i}_{single_plain[name]}"
            out[f"{base}.lora_down.weight"], out[f"{base}.lora_up.weight"] = a, b
            if alpha is not None:
                out[f"{base}.alpha"] = torch.tensor(float(alpha))
    for base, parts in groups.items():
        ordered = [parts[k] for k in sorted(parts)]
        out[f"{base}.lora_down.weight"] = ordered[0][0]          # one shared down projection
        out[f"{base}.lora_up.weight"] = torch.cat([p[1] for p in ordered])
        if ordered[0][2] is not None:
            out[f"{base}.alpha"] = torch.tensor(float(ordered[0][2]))
    return out


def shared_down(modules: dict) -> dict:
    """The same LoRA with one down projection per fused BFL group (what a kohya BFL file can express)."""
    out = dict(modules)
    for m in list(out):
        prefix, _, name = m.rpartition(".attn.")
        if name in ("to_k", "to_v") or name in ("add_k_proj", "add_v_proj"):
            first = f"{prefix}.attn.{'to_q' if name.startswith('to_') else 'add_q_proj'}"
            out[m] = (out[first][0], out[m][1], out[m][2])
        if m.endswith(".proj_mlp"):
            out[m] = (out[m.replace("proj_mlp", "attn.to_q")][0], out[m][1], out[m][2])
    return out


def write_lora(path: Path, modules: dict, form: str = "peft", metadata: dict | None = None) -> None:
    save_file({k: v.clone() for k, v in to_file_keys(modules, form).items()}, str(path), metadata=metadata)
