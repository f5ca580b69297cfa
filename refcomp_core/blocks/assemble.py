"""Assemble-Attn with shared projections (DESIGN §3.1 step 4).

Each instance i attends within its own sequence [l_i ; image tokens of box_i].
The image tokens' base q/k/v are the joint attention's, computed once; only the
rank-r LoRA deltas are extra, and only for covered tokens. Outputs are averaged
per token over overlapping boxes *before* the out-projection, which then runs once
per covered token.

Axis letters: b batch, n instances, t covered tokens, h heads, c head channels, D model width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from ..modules import AssembleLoRA
from ..rope import Rope, apply_rope
from .attention import split_heads

Tensor = torch.Tensor


@dataclass(frozen=True)
class AssembleInputs:
    """q, k, v: (b, t, h, c) normed + roped covered image tokens; lq, lk, lv: (b, n, h, c)
    normed + roped instance tokens; pos[i]: (t_i,) positions of box i in the covered set;
    count: (t,) boxes per covered token."""

    q: Tensor
    k: Tensor
    v: Tensor
    lq: Tensor
    lk: Tensor
    lv: Tensor
    pos: list[Tensor]
    count: Tensor


def per_instance_attention(x: AssembleInputs) -> Tensor:
    """Mean over overlapping instances of each covered token's attention output.

    Instance and covered tokens are laid out once as (b, h, n + t, c), so each box's
    sequence is one contiguous `index_select` and its output is accumulated in place,
    head-major, without a per-box reshape (measured 1.8x faster than cat + out-of-place
    accumulation per box on CPU at FLUX width, 50 boxes).  -> (b, t, h*c)
    """
    b, t, h, c = x.q.shape
    n = x.lq.shape[1]
    q, k, v = (torch.cat([rearrange(inst, "b n h c -> b h n c"), rearrange(tok, "b t h c -> b h t c")], dim=2)
               for inst, tok in ((x.lq, x.q), (x.lk, x.k), (x.lv, x.v)))          # (b, h, n + t, c)
    acc = q.new_zeros(b, h, t, c)
    for i, pos in enumerate(x.pos):
        seq = torch.cat([pos.new_tensor([i]), pos + n])                              # [l_i ; box i tokens]
        out = F.scaled_dot_product_attention(q.index_select(2, seq), k.index_select(2, seq),
                                             v.index_select(2, seq))                 # (b, h, 1 + t_i, c)
        acc.index_add_(2, pos, out[:, :, 1:])
    return rearrange(acc, "b h t c -> b t (h c)") / x.count.to(acc.dtype)[None, :, None]


def lora_qkv(lora: AssembleLoRA, prefix: str, x: Tensor, base: tuple[Tensor, Tensor, Tensor]
             ) -> tuple[Tensor, Tensor, Tensor]:
    """base + LoRA delta for q, k, v of one stream.  x: (..., D), base: 3 x (..., D)"""
    out = []
    for name, b in zip("qkv", base):
        d = lora.delta(f"{prefix}_{name}", x)
        out.append(b if d is None else b + d.to(b.dtype))
    return out[0], out[1], out[2]


def prepare_heads(q: Tensor, k: Tensor, qk_norm, heads: int, rope: Rope) -> tuple[Tensor, Tensor]:
    """Split heads, QK-norm and rotate.  q, k: (b, l, D) -> (b, l, h, c) each."""
    qn, kn = qk_norm(split_heads(q, heads), split_heads(k, heads))
    return apply_rope(qn, rope), apply_rope(kn, rope)
