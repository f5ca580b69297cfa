"""The block runner: one patched FLUX block = the block's own math plus the active pathways,
each called at its place (see `refcomp_core.pathways.base`). Written once for both hosts.

When no active pathway acts inside the block, the host's own block runs (`vanilla`) and only
the after-block places are called, so a pathway that only acts after the block costs nothing
inside it.

Axis letters: b batch, L text tokens, N image tokens (main grid first, then any
Kontext/reference tokens), D width.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import torch

from ..pathways.base import DoubleContext, JointAttention, ModRequest, Pathway, SingleContext
from ..pathways.token_mod import token_mod
from ..rope import Rope, apply_rope
from .attention import attention, split_heads
from .views import DoubleBlockView, SingleBlockView

Tensor = torch.Tensor


def run_double(view: DoubleBlockView, img: Tensor, txt: Tensor, vec: Tensor, rope: Rope,
               pathways: Sequence[Pathway], vanilla: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """img: (b, N, D), txt: (b, L, D), vec: (b, D), rope over [txt | img] (b|1, L+N, c/2).
    vanilla: the host's own block on these rows -> (img, txt).  -> (img, txt)"""
    ctx = DoubleContext(view=view, vec=vec, rope=rope, txt_len=txt.shape[1])
    inside = [p for p in pathways if p.inside]
    for p in inside:
        img, txt = p.before_double(ctx, img, txt)
    img, txt = _double_body(ctx, img, txt, inside) if inside else vanilla()
    for p in pathways:
        img, txt = p.after_double(ctx, img, txt)
    return img, txt


def run_single(view: SingleBlockView, x: Tensor, vec: Tensor, rope: Rope, txt_len: int,
               pathways: Sequence[Pathway], vanilla: Callable[[], Tensor]) -> Tensor:
    """x: (b, L+N, D) = [txt | img], vec: (b, D).  vanilla: the host's own block -> x.  -> (b, L+N, D)"""
    ctx = SingleContext(view=view, vec=vec, rope=rope, txt_len=txt_len)
    inside = [p for p in pathways if p.inside]
    x = _single_body(ctx, x, inside) if inside else vanilla()
    for p in pathways:
        x = p.after_single(ctx, x)
    return x


def _one(requests: Iterable[ModRequest | None], where: str) -> ModRequest | None:
    live = [r for r in requests if r is not None]
    if len(live) > 1:
        raise ValueError(f"RefComp: {len(live)} pathways modulate the {where} tokens of one block; at most one may")
    return live[0] if live else None


def _double_body(ctx: DoubleContext, img: Tensor, txt: Tensor, inside: list[Pathway]) -> tuple[Tensor, Tensor]:
    vec, rope, L, heads = ctx.vec, ctx.rope, ctx.txt_len, ctx.view.heads
    view = ctx.view
    for p in inside:
        view = p.wrap_double_view(view)
    img_mod = token_mod(view.img_mod, vec, _one((p.img_modulation(ctx) for p in inside), "image"))
    txt_mod = token_mod(view.txt_mod, vec, _one((p.txt_modulation(ctx) for p in inside), "text"))
    ctx.txt_base = txt_mod.base

    # joint attention with per-token image modulation
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
    img_out = view.img_proj(img_attn)                                       # (b, N, D), fresh

    # branches beside the attention add to its output before the gate
    joint = JointAttention(xm=xm, q=q, k=k, v=v, jk=jk, jv=jv)
    for p in inside:
        added = p.beside_attention(ctx, joint)
        if added is not None:
            img_out.index_add_(1, added[0], added[1])
    img = img + img_mod.gate(img_out, 2)
    for p in inside:
        p.after_attention(ctx, img)

    img = img + img_mod.gate(view.img_mlp(img_mod.modulate(view.img_norm2(img), 3, 4)), 5)
    txt = txt + txt_mod.gate(view.txt_proj(txt_attn), 2)
    txt = txt + txt_mod.gate(view.txt_mlp(txt_mod.modulate(view.txt_norm2(txt), 3, 4)), 5)
    return img, txt


def _single_body(ctx: SingleContext, x: Tensor, inside: list[Pathway]) -> Tensor:
    heads, L = ctx.view.heads, ctx.txt_len
    view = ctx.view
    for p in inside:
        view = p.wrap_single_view(view)
    request = _one((p.single_modulation(ctx) for p in inside), "image")
    if request is not None:                                                 # image tokens start after the text
        request = dataclasses.replace(request, offset=L)
    mod = token_mod(view.mod, ctx.vec, request)
    xm = mod.modulate(view.norm(x), 0, 1)                                   # (b, L+N, D)
    q, k, v, mlp = view.qkv_mlp(xm)
    q, k = view.qk_norm(split_heads(q, heads), split_heads(k, heads))
    q, k, v = apply_rope(q, ctx.rope), apply_rope(k, ctx.rope), split_heads(v, heads)       # (b, L+N, h, c)
    extra = [e for e in (p.single_attention(ctx, q, k, v) for p in inside) if e is not None]
    if len(extra) > 1:
        raise ValueError("RefComp: more than one pathway adds attention keys to one single block")
    if extra:
        ek, ev, bias = extra[0]
        attn = attention(q, torch.cat([k, ek], dim=1), torch.cat([v, ev], dim=1), bias=bias)
    else:
        attn = attention(q, k, v)                                           # (b, L+N, D)
    out = view.out(torch.cat([attn, view.mlp_act(mlp)], dim=-1))
    return x + mod.gate(out, 2)
