"""A deliberately naive reference of XVerse's T-Mod adapter (WEIGHTS_COMPAT §2.3), written from the
facts: plain matrix products on one reference at a time, an explicit loop over heads, its own
LayerNorm and softmax, float64. It reads the released key names directly from a state dict.
"""
from __future__ import annotations

import math

import torch


def layer_norm(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * weight + bias if weight is not None else y


def linear(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return x @ sd[f"{key}.weight"].T + sd[f"{key}.bias"]


def packed_attention(q_in: torch.Tensor, kv_in: torch.Tensor, sd: dict, key: str, heads: int) -> torch.Tensor:
    """q_in (Lq, W), kv_in (Lk, W): nn.MultiheadAttention's math from its packed [q; k; v] weights."""
    w, b = sd[f"{key}.in_proj_weight"], sd[f"{key}.in_proj_bias"]
    width = q_in.shape[-1]
    q = q_in @ w[:width].T + b[:width]
    k = kv_in @ w[width:2 * width].T + b[width:2 * width]
    v = kv_in @ w[2 * width:].T + b[2 * width:]
    c = width // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        cols = slice(h * c, (h + 1) * c)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(c)                   # (Lq, Lk)
        p = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
        p = p / p.sum(dim=-1, keepdim=True)
        out[:, cols] = p @ v[:, cols]
    return linear(out, sd, f"{key}.out_proj")


def ada_norm(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    """With the zero timestep embedding only the bias acts: (shift, scale) = its two halves."""
    shift, scale = sd[f"{key}.linear.bias"].chunk(2)
    return layer_norm(x, 1e-6) * (1 + scale) + shift


def resampler(sd: dict, prefix: str, layers: int, heads: int, txt: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """txt (L, C_text), img (M, C_image) of one reference -> (L, O)."""
    lat = linear(txt, sd, f"{prefix}.text_proj_in")
    x = linear(img, sd, f"{prefix}.image_proj_in")
    for i in range(layers):
        p = f"{prefix}.perceiver_blocks.{i}"
        nl = ada_norm(lat, sd, f"{p}.ln_1")
        nx = ada_norm(x, sd, f"{p}.ln_2")
        lat = lat + packed_attention(nl, torch.cat([nl, nx]), sd, f"{p}.attn", heads)
        hidden = torch.relu(linear(ada_norm(lat, sd, f"{p}.ln_ff"), sd, f"{p}.mlp.c_fc")) ** 2
        lat = lat + linear(hidden, sd, f"{p}.mlp.c_proj")
    out = linear(lat, sd, f"{prefix}.proj_out.0")
    return layer_norm(out, 1e-5, sd[f"{prefix}.proj_out.1.weight"], sd[f"{prefix}.proj_out.1.bias"])


def offsets(sd: dict, config: dict, num_double: int, txt: torch.Tensor, img: torch.Tensor):
    """Per reference b: shared (L, D) and per-block (L, K, D), stacked over the batch; float64."""
    sd = {k: v.double() for k, v in sd.items()}
    k = num_double + config["pblock_single_blocks"]
    shared, per_block = [], []
    for b in range(txt.shape[0]):
        t, i = txt[b].double(), img[b].double()
        shared.append(resampler(sd, "net", config["layers"], config["heads"], t, i))
        flat = resampler(sd, "net2", config["pblock_layers"], config["heads"], t, i)     # (L, K * D)
        per_block.append(torch.stack([flat[:, j * config["out_dim"]:(j + 1) * config["out_dim"]]
                                      for j in range(k)], dim=1))
    return torch.stack(shared), torch.stack(per_block)
