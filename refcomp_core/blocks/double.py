"""The patched double-stream block (DESIGN §3.1), written once for both hosts.

Axis letters: b batch, L text tokens, N image tokens (main grid first, then any
Kontext/reference tokens), n instances, g FG instances, t covered tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapter import RefCompAdapter
from ..rope import Rope, apply_rope
from ..state import CompositionState, GridIndex
from .assemble import AssembleInputs, lora_add, per_instance_attention, prepare_heads, prepare_keys
from .attention import attention, split_heads
from .token_mod import token_mod
from .views import DoubleBlockView

Tensor = torch.Tensor


@dataclass(frozen=True)
class BlockCall:
    """What one patched block call needs besides the activations.

    feedback: (b, g, D) from the previous double block, or None (first block).
    centre_rope: rope of the box centres (1, n, c/2).
    """

    adapter: RefCompAdapter
    state: CompositionState
    index: GridIndex
    block: int
    layout_on: bool
    mod_on: bool
    strength: float
    feedback: Tensor | None
    centre_rope: Rope


def fg_conditioning(call: BlockCall, vec: Tensor) -> Tensor | None:
    """y_i = vec + strength * alpha_i * off_{i,b}, off = base + P_b(base), base = shared + fb.

    vec: (b, D) -> (b, g, D), or None when the modulation pathway is off.
    """
    st = call.state
    if not call.mod_on or st.n_fg == 0:
        return None
    base = st.shared.to(vec.dtype)[None]                                   # (1, g, D)
    if call.feedback is not None:
        base = base + call.feedback.to(vec.dtype)                          # (b, g, D)
    off = call.adapter.modulation.block_offset(call.block, base.to(call.adapter.dtype)).to(vec.dtype)
    scale = (call.strength * st.alpha_fg.to(vec.dtype))[None, :, None]    # (1, g, 1)
    return vec[:, None] + scale * off                                      # (b, g, D)


def double_block(view: DoubleBlockView, img: Tensor, txt: Tensor, vec: Tensor, rope: Rope,
                 call: BlockCall) -> tuple[Tensor, Tensor, Tensor | None]:
    """img: (b, N, D), txt: (b, L, D), vec: (b, D), rope over [txt | img] (b|1, L+N, c/2).

    -> (img, txt, feedback for the next block (b, g, D) or None)
    """
    L, heads = txt.shape[1], view.heads
    idx = call.index
    y = fg_conditioning(call, vec)                                          # (b, g, D) or None
    img_mod, _, _ = token_mod(view.img_mod, vec, y, idx.mod_cov, idx.mod_w, 6)
    txt_mod, txt_base, _ = token_mod(view.txt_mod, vec, None, None, None, 6)
    txt_mod_y = view.txt_mod(y) if (y is not None and call.layout_on) else None

    # joint attention with per-token image modulation (steps 2-3)
    xm = img_mod.modulate(view.img_norm1(img), 0, 1)                        # (b, N, D)
    q, k, v = view.img_qkv(xm)                                              # 3 x (b, N, D)
    txm = txt_mod.modulate(view.txt_norm1(txt), 0, 1)                       # (b, L, D)
    tq, tk, tv = view.txt_qkv(txm)
    iq, ik = view.img_qk_norm(split_heads(q, heads), split_heads(k, heads))
    tq_, tk_ = view.txt_qk_norm(split_heads(tq, heads), split_heads(tk, heads))
    jq = apply_rope(torch.cat([tq_, iq], dim=1), rope)                     # (b, L+N, h, c)
    jk = apply_rope(torch.cat([tk_, ik], dim=1), rope)
    jv = torch.cat([split_heads(tv, heads), split_heads(v, heads)], dim=1)
    out = attention(jq, jk, jv)                                             # (b, L+N, D)
    txt_attn, img_attn = out[:, :L], out[:, L:]
    img_out = view.img_proj(img_attn)                                       # (b, N, D)

    # Assemble-Attn, parallel to the joint attention (step 4)
    if call.layout_on and call.adapter.is_layout_block(call.block) and idx.asm_cov.numel():
        asm = _assemble(view, call, xm, (q, k, v), rope, L, txt_base, txt_mod_y)
        img_out.index_add_(1, idx.asm_cov, asm)                             # img_out is fresh: in place
    img = img + img_mod.gate(img_out, 2)

    feedback = _feedback(call, img)                                         # step 5

    # MLP with per-token modulation (step 6)
    img = img + img_mod.gate(view.img_mlp(img_mod.modulate(view.img_norm2(img), 3, 4)), 5)
    txt = txt + txt_mod.gate(view.txt_proj(txt_attn), 2)
    txt = txt + txt_mod.gate(view.txt_mlp(txt_mod.modulate(view.txt_norm2(txt), 3, 4)), 5)
    return img, txt, feedback


def _assemble(view: DoubleBlockView, call: BlockCall, xm: Tensor, base_qkv: tuple[Tensor, Tensor, Tensor],
              rope: Rope, L: int, txt_base: Tensor, txt_y: Tensor | None) -> Tensor:
    """The branch's contribution on covered tokens, before the attention gate.  -> (b, t, D)"""
    idx, st, heads = call.index, call.state, view.heads
    lora = call.adapter.lora[str(call.block)]
    cov = idx.asm_cov
    q, k, v = lora_add(lora, ("img_q", "img_k", "img_v"), xm[:, cov], [t[:, cov] for t in base_qkv])  # (b, t, D)
    q, k = prepare_heads(q, k, view.img_qk_norm, heads, rope[L + cov])

    # instance tokens through the text-stream AdaLN: mod(y_i) for FG, the base for BG.
    # Only their keys and values are used (their own outputs are discarded).
    b, d, dtype = xm.shape[0], xm.shape[-1], xm.dtype
    mods = txt_base[:, None].expand(b, st.n, txt_base.shape[-1])            # (b, n, 6D)
    if txt_y is not None:
        mods = mods.index_copy(1, st.fg_ids, txt_y)
    shift, scale = mods[..., 0:d], mods[..., d:2 * d]                        # chunks 0, 1 of the AdaLN
    lt = st.layout_tokens.to(dtype)[None].expand(b, -1, -1)                 # (b, n, D)
    ln = torch.addcmul(shift, view.txt_norm1(lt), 1 + scale)                 # (b, n, D)
    _, tk, tv = view.txt_qkv(ln)
    lk, lv = lora_add(lora, ("txt_k", "txt_v"), ln, [tk, tv])
    lk = prepare_keys(lk, view.txt_qk_norm, heads, call.centre_rope)

    avg = per_instance_attention(AssembleInputs(q=q, k=k, v=split_heads(v, heads), lk=lk,
                                                lv=split_heads(lv, heads), pos=idx.asm_pos, count=idx.asm_count))
    out = lora_add(lora, ("img_out",), avg, [view.img_proj(avg)])[0]        # (b, t, D)
    gate = call.adapter.assemble_gate[str(call.block)]
    if gate.kind == "gate":                                                  # strength folded into the gate
        return out * (gate.gate * call.strength).to(dtype)
    return gate(out.to(call.adapter.dtype)).to(dtype) * call.strength


def _feedback(call: BlockCall, img: Tensor) -> Tensor | None:
    """M5: mean of the updated image tokens inside each FG box -> bridge.  -> (b, g, D)"""
    st, idx = call.state, call.index
    if not call.mod_on or st.n_fg == 0:
        return None
    b, _, d = img.shape
    pooled = img.new_zeros(b, st.n_fg, d).index_add(1, idx.fg_seg, img[:, idx.fg_tok])
    pooled = pooled / idx.fg_size.to(img.dtype)[None, :, None]
    return call.adapter.bridge(call.block, pooled.to(call.adapter.dtype)).to(img.dtype)
