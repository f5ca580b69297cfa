"""Attention helpers. Axis letters: b batch, l tokens, h heads, c head channels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

Tensor = torch.Tensor


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(b, l, h*c) -> (b, l, h, c)"""
    return rearrange(x, "b l (h c) -> b l h c", h=heads)


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Softmax attention, with an optional additive bias (b|1, h|1, l, s).
    q: (b, l, h, c), k, v: (b, s, h, c) -> (b, l, h*c)"""
    out = F.scaled_dot_product_attention(rearrange(q, "b l h c -> b h l c"), rearrange(k, "b l h c -> b h l c"),
                                         rearrange(v, "b l h c -> b h l c"), attn_mask=bias)
    return rearrange(out, "b h l c -> b l (h c)")
