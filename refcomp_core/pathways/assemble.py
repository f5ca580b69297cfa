"""RefComp's layout pathway: Assemble-Attn with shared projections (DESIGN §3.1 step 4),
a branch beside the joint attention.

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

from ..blocks import hotpath
from ..blocks.attention import split_heads
from ..blocks.packed import Packing, packed_attention
from ..modules import LoRASet
from ..rope import Rope, apply_rope
from ..state import CompositionState, GridIndex
from .base import DoubleContext, JointAttention, Pathway

Tensor = torch.Tensor


@dataclass(frozen=True)
class AssembleInputs:
    """q, k, v: (b, t, h, c) normed + roped covered image tokens; lk, lv: (b, n, h, c)
    normed + roped instance-token keys and values; pos[i]: (t_i,) positions of box i in the
    covered set; packing: the same sequences packed end to end (`blocks.packed`).

    The instance tokens' queries are not needed: only the image tokens' outputs are kept,
    and a token's output does not depend on the other tokens' queries."""

    q: Tensor
    k: Tensor
    v: Tensor
    lk: Tensor
    lv: Tensor
    pos: Sequence[Tensor]
    packing: Packing


def per_instance_attention(x: AssembleInputs) -> Tensor:
    """Mean over overlapping instances of each covered token's attention output; box i's queries
    are its tokens, its keys/values [l_i ; its tokens].  -> (b, t, h*c)

    On the fused (CUDA) path the sequences are packed and attend in one call; on CPU a per-box
    loop measured 1.3x faster than the packed layout (bench/RESULTS.md §3)."""
    return packed_instance_attention(x) if hotpath.fused(x.q.device) else per_box_attention(x)


def packed_instance_attention(x: AssembleInputs) -> Tensor:
    """The sequences packed once per layout (one gather per tensor), attended together
    (`packed_attention`), and averaged back per token with one `index_add`.  -> (b, t, h*c)"""
    p = x.packing
    out = packed_attention(p.pack(None, x.q), p.pack(x.lk, x.k), p.pack(x.lv, x.v), p)     # (b, S, h, c)
    return rearrange(p.mean_over_boxes(out), "b t h c -> b t (h c)")


def per_box_attention(x: AssembleInputs) -> Tensor:
    """The CPU loop. Tokens stay token-major throughout: each box's sequence is one row
    `index_select` (a gather of whole (h, c) rows), SDPA reads the head-major views by stride
    and writes token-major, and outputs are accumulated in place. Measured on CPU at FLUX
    width, 50 boxes: 2.3x faster than cat + out-of-place accumulation per box, 1.3x faster
    than head-major gathers (which copy across heads).  -> (b, t, h*c)
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
    return rearrange(acc, "b t h c -> b t (h c)") / x.packing.count.to(acc.dtype)[None, :, None]


def lora_add(lora: LoRASet, names: Sequence[str], x: Tensor, base: Sequence[Tensor]) -> list[Tensor]:
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


class AssembleAttn(Pathway):
    """Assemble-Attn of one layout block call: per instance, [l_i ; its box tokens] attend among
    themselves; the mean over overlapping boxes goes through the out-projection (+LoRA) and the
    zero-init output gate, added to the image attention output before the attention gate."""

    inside = True

    def __init__(self, *, adapter, state: CompositionState, index: GridIndex, block: int, strength: float,
                 centre_rope: Rope) -> None:
        self.adapter, self.state, self.index, self.block = adapter, state, index, block
        self.strength, self.centre_rope = strength, centre_rope

    def beside_attention(self, ctx: DoubleContext, att: JointAttention) -> tuple[Tensor, Tensor] | None:
        """-> (covered tokens (t,), contribution (b, t, D) before the attention gate)"""
        idx, st, view, heads = self.index, self.state, ctx.view, ctx.view.heads
        cov = idx.asm_cov
        if not cov.numel():
            return None
        lora = self.adapter.lora[str(self.block)]
        xm = att.xm
        q, k, v = lora_add(lora, ("img_q", "img_k", "img_v"), xm[:, cov], [t[:, cov] for t in (att.q, att.k, att.v)])
        q, k = prepare_heads(q, k, view.img_qk_norm, heads, idx.covered_rope(ctx.rope, ctx.txt_len))

        # instance tokens through the text-stream AdaLN: mod(y_i) for FG, the base for BG.
        # Only their keys and values are used (their own outputs are discarded).
        b, d, dtype = xm.shape[0], xm.shape[-1], xm.dtype
        mods = ctx.txt_base[:, None].expand(b, st.n, ctx.txt_base.shape[-1])     # (b, n, 6D)
        if ctx.fg_y is not None:
            mods = mods.index_copy(1, st.fg_ids, view.txt_mod(ctx.fg_y))
        shift, scale = mods[..., 0:d], mods[..., d:2 * d]                        # chunks 0, 1 of the AdaLN
        lt = st.layout_tokens.to(dtype)[None].expand(b, -1, -1)                 # (b, n, D)
        ln = torch.addcmul(shift, view.txt_norm1(lt), 1 + scale)                 # (b, n, D)
        _, tk, tv = view.txt_qkv(ln)
        lk, lv = lora_add(lora, ("txt_k", "txt_v"), ln, [tk, tv])
        lk = prepare_keys(lk, view.txt_qk_norm, heads, self.centre_rope)

        avg = per_instance_attention(AssembleInputs(q=q, k=k, v=split_heads(v, heads), lk=lk,
                                                    lv=split_heads(lv, heads), pos=idx.asm_pos,
                                                    packing=idx.asm_packing))
        out = lora_add(lora, ("img_out",), avg, [view.img_proj(avg)])[0]        # (b, t, D)
        gate = self.adapter.assemble_gate[str(self.block)]
        if gate.kind == "gate":                                                  # strength folded into the gate
            return cov, out * (gate.gate * self.strength).to(dtype)
        return cov, gate(out.to(self.adapter.dtype)).to(dtype) * self.strength
