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

from ..modules import AssembleLoRA
from ..rope import Rope, apply_rope
from .attention import attention, split_heads

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

    -> (b, t, h*c)
    """
    b, t, h, c = x.q.shape
    acc = x.q.new_zeros(b, t, h * c)
    for i, pos in enumerate(x.pos):
        q = torch.cat([x.lq[:, i:i + 1], x.q[:, pos]], dim=1)                 # (b, 1 + t_i, h, c)
        k = torch.cat([x.lk[:, i:i + 1], x.k[:, pos]], dim=1)
        v = torch.cat([x.lv[:, i:i + 1], x.v[:, pos]], dim=1)
        out = attention(q, k, v)[:, 1:]                                        # (b, t_i, h*c)
        acc = acc.index_add(1, pos, out)
    return acc / x.count.to(acc.dtype)[None, :, None]


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
