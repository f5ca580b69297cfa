"""An independent, deliberately naive reference of XVerse's FLUX forward (WEIGHTS_COMPAT §2.5-§2.7),
written in the tests from the facts, never from RefComp's pathway or upstream code.

It runs a diffusers FluxTransformer2DModel whose XVerse LoRA is loaded by peft, every scale 0 by
default and set per stream around each sub-module call (text stream and references at g; image
tokens 0 in double blocks; single blocks 0.85 for text + image and 1.3 for references, none on the
AdaLN and the MLP input). The reference tokens are concatenated into one attention over
[txt ; img ; R] with an explicit mask built row by row.

Axis letters: L text tokens, N image tokens, S reference tokens.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb


@contextlib.contextmanager
def scaled(modules, value: float):
    modules = modules if isinstance(modules, (list, tuple)) else [modules]
    for m in modules:
        if hasattr(m, "set_scale"):
            m.set_scale("xv", value)
    try:
        yield
    finally:
        for m in modules:
            if hasattr(m, "set_scale"):
                m.set_scale("xv", 0.0)


def load_peft(model, state_dict: dict):
    from peft.tuners.tuners_utils import BaseTunerLayer
    model.load_lora_adapter(state_dict, adapter_name="xv", prefix="transformer")
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.set_scale("xv", 0.0)
    return model


def heads(x, h):
    return x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)          # (b, h, l, c)


def forward(model, inp: dict, xv: dict, *, g: float = 1.0, lat_sb: float = 0.85, ref_sb: float = 1.3,
            refs: bool = True, plain_union: bool = False, after_double=None, after_single=None) -> torch.Tensor:
    """xv: delta_shared (L, D), delta_block (nd, L, D), mask (L,) bool, text_cond (L, r) bool,
    ref_latents (S, C), ref_ids (S, 3), lam (r,) float, optional confine (N, r) bool (image token n may
    see reference r only where True). plain_union: single blocks attend over
    [txt ; img ; R] with no bias at all. after_double(i, block, hs, temb) / after_single(i, block, hs, temb)
    -> hs: another method's branch inserted after a block (for the composition test)."""
    h = model.config.num_attention_heads
    with scaled(model.x_embedder, g):
        hs = model.x_embedder(inp["hidden_states"])
        r = model.x_embedder(xv["ref_latents"])[None].expand(hs.shape[0], -1, -1) if refs else None
    t, guid, pooled = inp["timestep"], inp["guidance"], inp["pooled_projections"]
    temb = model.time_text_embed(t * 1000, guid * 1000, pooled)
    ctemb = model.time_text_embed(t * 0, guid * 1000, pooled)
    ehs = model.context_embedder(inp["encoder_hidden_states"])
    rope = model.pos_embed(torch.cat([inp["txt_ids"], inp["img_ids"]]))
    rrope = model.pos_embed(xv["ref_ids"])
    L, N = ehs.shape[1], hs.shape[1]
    for b, blk in enumerate(model.transformer_blocks):
        a = blk.attn
        with scaled(blk.norm1_context.linear, g):
            e_orig = blk.norm1_context.linear(F.silu(temb))[:, None].expand(-1, L, -1)
            e_new = blk.norm1_context.linear(F.silu(temb[:, None] + xv["delta_shared"] + xv["delta_block"][b]))
        e = torch.where(xv["mask"][None, :, None], e_new, e_orig)
        csh, csc, cg, csh2, csc2, cg2 = e.chunk(6, dim=-1)
        ctx_n = blk.norm1_context.norm(ehs) * (1 + csc) + csh
        x_n, g_msa, sh_mlp, sc_mlp, g_mlp = blk.norm1(hs, emb=temb)
        with scaled([a.add_q_proj, a.add_k_proj, a.add_v_proj], g):
            tq, tk, tv = a.add_q_proj(ctx_n), a.add_k_proj(ctx_n), a.add_v_proj(ctx_n)
        q, k, v = a.to_q(x_n), a.to_k(x_n), a.to_v(x_n)
        jq = torch.cat([a.norm_added_q(heads(tq, h)), a.norm_q(heads(q, h))], dim=2)
        jk = torch.cat([a.norm_added_k(heads(tk, h)), a.norm_k(heads(k, h))], dim=2)
        jv = torch.cat([heads(tv, h), heads(v, h)], dim=2)
        jq, jk = apply_rotary_emb(jq, rope), apply_rotary_emb(jk, rope)
        if refs:
            with scaled(blk.norm1.linear, g):
                r_n, rg_msa, rsh, rsc, rg_mlp = blk.norm1(r, emb=ctemb)
            with scaled([a.to_q, a.to_k, a.to_v], g):
                rq, rk, rv = a.to_q(r_n), a.to_k(r_n), a.to_v(r_n)
            rq, rk = apply_rotary_emb(a.norm_q(heads(rq, h)), rrope), apply_rotary_emb(a.norm_k(heads(rk, h)), rrope)
            fq, fk, fv = torch.cat([jq, rq], 2), torch.cat([jk, rk], 2), torch.cat([jv, heads(rv, h)], 2)
            total = fq.shape[2]
            mask = torch.ones(total, total, dtype=torch.bool)
            mask[:L + N, L + N:] = False                                       # txt and img never see R
            o = F.scaled_dot_product_attention(fq, fk, fv, attn_mask=mask)
        else:
            o = F.scaled_dot_product_attention(jq, jk, jv)
        o = o.transpose(1, 2).flatten(2)
        o_txt, o_img, o_r = o[:, :L], o[:, L:L + N], o[:, L + N:]
        img_o = a.to_out[0](o_img)
        with scaled(a.to_add_out, g):
            txt_o = a.to_add_out(o_txt)
        hs = hs + g_msa[:, None] * img_o
        hs = hs + g_mlp[:, None] * blk.ff(blk.norm2(hs) * (1 + sc_mlp[:, None]) + sh_mlp[:, None])
        ehs = ehs + cg * txt_o
        with scaled(blk.ff_context.net[2], g):
            ehs = ehs + cg2 * blk.ff_context(blk.norm2_context(ehs) * (1 + csc2) + csh2)
        if refs:
            with scaled(a.to_out[0], g):
                r_o = a.to_out[0](o_r)
            r = r + rg_msa[:, None] * r_o
            with scaled(blk.ff.net[2], g):
                r = r + rg_mlp[:, None] * blk.ff(blk.norm2(r) * (1 + rsc[:, None]) + rsh[:, None])
        if after_double is not None:
            hs = after_double(b, blk, hs, temb)
    for s_index, blk in enumerate(model.single_transformer_blocks):
        a = blk.attn
        x = torch.cat([ehs, hs], dim=1)
        xn, gate = blk.norm(x, emb=temb)
        mlp = blk.act_mlp(blk.proj_mlp(xn))
        with scaled([a.to_q, a.to_k, a.to_v], lat_sb):
            q, k, v = heads(a.to_q(xn), h), heads(a.to_k(xn), h), heads(a.to_v(xn), h)
        q, k = apply_rotary_emb(a.norm_q(q), rope), apply_rotary_emb(a.norm_k(k), rope)
        if refs:
            rn, rgate = blk.norm(r, emb=ctemb)
            rmlp = blk.act_mlp(blk.proj_mlp(rn))
            with scaled([a.to_q, a.to_k, a.to_v], ref_sb):
                rq, rk, rv = heads(a.to_q(rn), h), heads(a.to_k(rn), h), heads(a.to_v(rn), h)
            rq, rk = apply_rotary_emb(a.norm_q(rq), rrope), apply_rotary_emb(a.norm_k(rk), rrope)
            fq, fk, fv = torch.cat([q, rq], 2), torch.cat([k, rk], 2), torch.cat([v, rv], 2)
            total, per = fq.shape[2], rq.shape[2] // xv["lam"].numel()
            bias = torch.zeros(total, total)
            for j, lam in enumerate(xv["lam"].tolist()):
                logl = float(torch.tensor(math.log(lam)).to(torch.bfloat16))      # XVerse's mask is bf16
                cols = slice(L + N + j * per, L + N + (j + 1) * per)
                for i in range(L):
                    bias[i, cols] = logl if bool(xv["text_cond"][i, j]) else -math.inf
                bias[L:L + N, cols] = logl
                if xv.get("confine") is not None:                                   # RefComp's option
                    for n in range(N):
                        if not bool(xv["confine"][n, j]):
                            bias[L + n, cols] = -math.inf
            o = F.scaled_dot_product_attention(fq, fk, fv, attn_mask=None if plain_union else bias)
            o = o.transpose(1, 2).flatten(2)
            o_x, o_r = o[:, :L + N], o[:, L + N:]
            with scaled(blk.proj_out, ref_sb):
                r = r + rgate[:, None] * blk.proj_out(torch.cat([o_r, rmlp], dim=2))
        else:
            o_x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        with scaled(blk.proj_out, lat_sb):
            x = x + gate[:, None] * blk.proj_out(torch.cat([o_x, mlp], dim=2))
        ehs, hs = x[:, :L], x[:, L:]
        if after_single is not None:
            hs = after_single(s_index, blk, hs, temb)
    return model.proj_out(model.norm_out(hs, temb))
