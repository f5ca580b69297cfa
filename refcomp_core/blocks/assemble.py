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
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from ..modules import AssembleLoRA
from ..rope import Rope, apply_rope
from .attention import split_heads

Tensor = torch.Tensor


@dataclass(frozen=True)
class AssembleInputs:
    """q, k, v: (b, t, h, c) normed + roped covered image tokens; lk, lv: (b, n, h, c)
    normed + roped instance-token keys and values; pos[i]: (t_i,) positions of box i in
    the covered set; count: (t,) boxes per covered token.

    The instance tokens' queries are not needed: only the image tokens' outputs are kept,
    and a token's output does not depend on the other tokens' queries."""

    q: Tensor
    k: Tensor
    v: Tensor
    lk: Tensor
    lv: Tensor
    pos: list[Tensor]
    count: Tensor


def per_instance_attention(x: AssembleInputs) -> Tensor:
    """Mean over overlapping instances of each covered token's attention output.

    Box i's queries are its tokens; its keys/values are [l_i ; its tokens]. Tokens stay
    token-major throughout: each box's sequence is one row `index_select` (a gather of
    whole (h, c) rows), SDPA reads the head-major views by stride and writes token-major,
    and outputs are accumulated in place. Measured on CPU at FLUX width, 50 boxes: 2.3x
    faster than cat + out-of-place accumulation per box, 1.3x faster than head-major
    gathers (which copy across heads).  -> (b, t, h*c)
    """
    b, t, h, c = x.q.shape
    n = x.lk.shape[1]
    k, v = torch.cat([x.lk, x.k], dim=1), torch.cat([x.lv, x.v], dim=1)             # (b, n + t, h, c)
    acc = x.q.new_zeros(b, t, h, c)
    for i, pos in enumerate(x.pos):
        kv = torch.cat([pos.new_tensor([i]), pos + n])                               # [l_i ; box i tokens]
        out = F.scaled_dot_product_attention(*(rearrange(a.index_select(1, s), "b l h c -> b h l c")
                                               for a, s in ((x.q, pos), (k, kv), (v, kv))))   # (b, h, t_i, c)
        acc.index_add_(1, pos, rearrange(out, "b h l c -> b l h c"))
    return rearrange(acc, "b t h c -> b t (h c)") / x.count.to(acc.dtype)[None, :, None]


def lora_add(lora: AssembleLoRA, names: Sequence[str], x: Tensor, base: Sequence[Tensor]) -> list[Tensor]:
    """base_j + LoRA_j(x) for each target name (a target without LoRA passes its base through).

    Hot path: the targets' down-projections run as one matmul, and each up-projection is
    fused with its scale and its add into one `addmm` (saves three passes over (t, D) per
    target on CPU). x: (..., D) -> list of (..., D) in base's dtype.
    """
    out = list(base)
    live = [j for j, name in enumerate(names) if name in lora.deltas]
    if not live:
        return out
    mods = [lora.deltas[names[j]] for j in live]
    downs = [m.down.weight for m in mods]
    hidden = F.linear(x.to(downs[0].dtype), downs[0] if len(downs) == 1 else torch.cat(downs))   # (..., k*r)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    start = 0
    for j, m in zip(live, mods):
        h = hidden[:, start:start + m.down.weight.shape[0]]                          # (..., r) flattened
        start += m.down.weight.shape[0]
        b = base[j]
        if b.dtype == h.dtype:
            out[j] = torch.addmm(b.reshape(-1, b.shape[-1]), h, m.up.weight.t(), alpha=m.scale).view(b.shape)
        else:
            out[j] = b + (F.linear(h, m.up.weight) * m.scale).to(b.dtype).view(b.shape)
    return out


def prepare_heads(q: Tensor, k: Tensor, qk_norm, heads: int, rope: Rope) -> tuple[Tensor, Tensor]:
    """Split heads, QK-norm and rotate.  q, k: (b, l, D) -> (b, l, h, c) each."""
    qn, kn = qk_norm(split_heads(q, heads), split_heads(k, heads))
    return apply_rope(qn, rope), apply_rope(kn, rope)


def prepare_keys(k: Tensor, qk_norm, heads: int, rope: Rope) -> Tensor:
    """Split heads, K-norm and rotate keys only.  k: (b, l, D) -> (b, l, h, c)"""
    kh = split_heads(k, heads)
    return apply_rope(qk_norm(kh, kh)[1], rope)
