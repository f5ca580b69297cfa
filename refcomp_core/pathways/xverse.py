"""XVerse's released identity pathway (WEIGHTS_COMPAT §2.5-§2.7), exact, as two pathway pieces.

Double block b:
- the text stream runs with XVerse's LoRA at the global scale g (AdaLN, q/k/v, out, second FFN
  linear: `wrap_double_view`), and the prompt tokens bound to a reference get per-token AdaLN
  from vec + shared + block_b (`txt_modulation`);
- the reference tokens R (the references' VAE latents, 256 per reference) run as a third,
  read-only stream beside the joint attention (`beside_attention`): image-stream weights with
  LoRA at g, t = 0 modulation, R rows attend to [txt ; img ; R] while text and image rows never
  see R, so the joint attention itself is unchanged.
Single block s:
- q/k/v and the output linear carry LoRA at `latent_sblock` (0.85) for text and image tokens
  (`wrap_single_view`) and at `ref_sblock` (1.3) for R; the AdaLN and the MLP input have none;
- text and image rows also attend to R (`single_attention`) with an additive bias: log lambda_j on
  reference j's columns for image rows and for the prompt tokens bound to reference j, -inf for
  every other text row; R rows attend to everything with no bias. With `XVerseState.confine`
  (RefComp's experimental option, not XVerse's) an image row outside reference j's box gets -inf
  on reference j's columns too.
On VAE-skip steps R is absent everywhere; the text-stream offsets and the LoRA stay.

Axis letters: b batch, L text tokens, N image tokens, S reference tokens (r references x T each),
m bound prompt tokens, h heads, c head channels, D width.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from ..blocks.attention import split_heads
from ..blocks.views import DoubleBlockView, SingleBlockView
from ..modules import LoRASet
from ..rope import Rope, apply_rope
from .base import DoubleContext, JointAttention, ModRequest, Pathway, SingleContext, mod_chunks

Tensor = torch.Tensor


@dataclass(frozen=True)
class XVerseScales:
    """The per-site LoRA multipliers of XVerse's entry points (WEIGHTS_COMPAT §2.1, §2.6).

    global_scale: `ip_scale` (1.0 for the CLI `inference_single_sample.py`, 0.85 for the demo and the
    benchmark): x_embedder, the text stream and the references in double blocks. latent_sblock /
    ref_sblock: single-block q/k/v/out for text + image tokens / for references (absolute)."""

    global_scale: float = 1.0
    latent_sblock: float = 0.85
    ref_sblock: float = 1.3


@dataclass
class XVerseState:
    """Everything step-independent of one XVerse composition (computed once per sampling run).

    delta_shared: (L, D) shared offsets at the bound prompt tokens; delta_block: (nd, L, D) per double
    block; bound: (m,) prompt token indices with an offset; text_cond: (L, r) prompt tokens bound to
    each reference; ref_latents: (S, C) packed reference latents (before x_embedder); ref_rope: RoPE of
    the reference position ids (1, S, c/2); lam: (r,) the lambda of each reference (weight_id / weight_ip).
    confine: (N, r) bool or None: image token n may attend to reference j's tokens in the single blocks
    only where True (its box); None = everywhere, as XVerse.
    """

    delta_shared: Tensor
    delta_block: Tensor
    bound: Tensor
    text_cond: Tensor
    ref_latents: Tensor | None
    ref_rope: Rope | None
    lam: Tensor
    tokens_per_ref: int
    confine: Tensor | None = None
    _bias: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_refs(self) -> int:
        return int(self.text_cond.shape[1])

    def to(self, device: torch.device | str) -> "XVerseState":
        """A copy with every tensor on `device`."""
        move = lambda t: None if t is None else t.to(device)   # noqa: E731
        rope = None if self.ref_rope is None else Rope(self.ref_rope.cos.to(device), self.ref_rope.sin.to(device))
        return dataclasses.replace(self, delta_shared=move(self.delta_shared), delta_block=move(self.delta_block),
                                   bound=move(self.bound), text_cond=move(self.text_cond),
                                   ref_latents=move(self.ref_latents), ref_rope=rope, lam=move(self.lam),
                                   confine=move(self.confine))


def _delta(lora, site: str, x: Tensor, mult: float) -> Tensor | None:
    """mult * LoRA_site(x) in x's dtype, or None when the site has no LoRA or mult is 0. `lora.deltas[site]`
    is a LowRank (down, up Linear; scale) or an XVerse LoRAPair (down, up weights; alpha_over_rank)."""
    if lora is None or mult == 0 or site not in lora.deltas:
        return None
    m = lora.deltas[site]
    if hasattr(m, "alpha_over_rank"):
        down, up, scale = m.down, m.up, m.alpha_over_rank
    else:
        down, up, scale = m.down.weight, m.up.weight, m.scale
    return (F.linear(F.linear(x.to(down.dtype), down), up) * (scale * mult)).to(x.dtype)


def _plus(base: Tensor, delta: Tensor | None) -> Tensor:
    return base if delta is None else base + delta


def _linear_lora(fn: Callable[[Tensor], Tensor], lora: LoRASet | None, site: str, mult: float):
    return lambda x: _plus(fn(x), _delta(lora, site, x, mult))


def _mod_lora(fn: Callable[[Tensor], Tensor], lora: LoRASet | None, site: str, mult: float):
    """An AdaLN view callable (vec -> Linear(SiLU(vec))) with the LoRA on its linear."""
    return lambda v: _plus(fn(v), _delta(lora, site, F.silu(v), mult))


def lambda_bias(lam: Tensor, dtype: torch.dtype) -> Tensor:
    """log lambda rounded to bf16 as XVerse's bf16 attention mask holds it.  (r,) -> (r,)"""
    return torch.log(lam.float()).to(torch.bfloat16).to(dtype)


class XVerseDouble(Pathway):
    """XVerse in double block `block` for one run of batch rows.

    refs_on: whether the reference stream runs this step (False on VAE-skip steps or without
    references); cond_vec: (b, D) the conditioning at t = 0 (references' modulation);
    r_in: the reference tokens entering this block (b, S, D), or None at the first block
    (then embedded from state.ref_latents with `embed`); store_r keeps R after the block."""

    inside = True

    def __init__(self, *, state: XVerseState, loras: Mapping[str, LoRASet], block: int, scales: XVerseScales,
                 refs_on: bool, cond_vec: Tensor | None, r_in: Tensor | None,
                 embed: Callable[[Tensor], Tensor] | None, store_r: Callable[[Tensor], None],
                 latents: Tensor | None = None) -> None:
        self.state, self.lora, self.block, self.scales = state, loras.get(str(block)), block, scales
        self.refs_on, self.cond_vec, self.r_in, self.embed, self.store_r = refs_on, cond_vec, r_in, embed, store_r
        self.x_lora, self.latents = loras.get("x"), latents

    def before_double(self, ctx: DoubleContext, img: Tensor, txt: Tensor) -> tuple[Tensor, Tensor]:
        """Block 0: x_embedder's LoRA on these rows' main-grid image tokens (latents: (b, N, C))."""
        delta = None if self.latents is None else _delta(self.x_lora, "x_embedder", self.latents,
                                                           self.scales.global_scale)
        if delta is None:
            return img, txt
        n = delta.shape[1]
        return torch.cat([img[:, :n] + delta.to(img.dtype), img[:, n:]], dim=1), txt

    def _embed_refs(self, b: int) -> Tensor:
        """R at the first double block: x_embedder (+ LoRA at g) of the packed reference latents.  -> (b, S, D)"""
        x = self.state.ref_latents
        r = _plus(self.embed(x.to(self.embed.weight.dtype) if hasattr(self.embed, "weight") else x),
                  _delta(self.x_lora, "x_embedder", x, self.scales.global_scale))
        return r[None].expand(b, -1, -1)

    def wrap_double_view(self, view: DoubleBlockView) -> DoubleBlockView:
        """The text stream with XVerse's LoRA at the global scale."""
        g, lora = self.scales.global_scale, self.lora
        if lora is None or g == 0:
            return view
        qkv = view.txt_qkv

        def txt_qkv(x: Tensor):
            q, k, v = qkv(x)
            return (_plus(q, _delta(lora, "txt_q", x, g)), _plus(k, _delta(lora, "txt_k", x, g)),
                    _plus(v, _delta(lora, "txt_v", x, g)))

        return dataclasses.replace(view, txt_mod=_mod_lora(view.txt_mod, lora, "txt_mod", g), txt_qkv=txt_qkv,
                                   txt_proj=_linear_lora(view.txt_proj, lora, "txt_out", g),
                                   txt_mlp_out=_linear_lora(view.txt_mlp_out, lora, "txt_mlp_out", g))

    def txt_modulation(self, ctx: DoubleContext) -> ModRequest | None:
        st = self.state
        if st.bound.numel() == 0:
            return None
        if ctx.txt_len != st.delta_shared.shape[0]:
            raise ValueError(f"XVerse: the prompt has {ctx.txt_len} text tokens but the offsets were bound for "
                             f"{st.delta_shared.shape[0]}; encode the prompt at exactly that length")
        dt = ctx.vec.dtype
        off = (st.delta_shared[st.bound] + st.delta_block[self.block, st.bound]).to(dt)      # (m, D)
        y = ctx.vec[:, None] + off[None]                                                    # (b, m, D)
        return ModRequest(y=y, cov=st.bound, weights=torch.eye(st.bound.numel(), device=y.device, dtype=dt))

    def beside_attention(self, ctx: DoubleContext, att: JointAttention) -> None:
        if not self.refs_on:
            return None
        view, heads, g, lora = ctx.view, ctx.view.heads, self.scales.global_scale, self.lora
        r = (self.r_in if self.r_in is not None else self._embed_refs(ctx.vec.shape[0])).to(ctx.vec.dtype)
        sh1, sc1, g1, sh2, sc2, g2 = mod_chunks(_mod_lora(view.img_mod, lora, "img_mod", g)(self.cond_vec), 6)
        rn = torch.addcmul(sh1, view.img_norm1(r), 1 + sc1)                        # (b, S, D)
        q, k, v = view.img_qkv(rn)
        q, k, v = (_plus(t, _delta(lora, s, rn, g)) for t, s in ((q, "img_q"), (k, "img_k"), (v, "img_v")))
        q, k = view.img_qk_norm(split_heads(q, heads), split_heads(k, heads))
        q, k = apply_rope(q, self.state.ref_rope), apply_rope(k, self.state.ref_rope)
        keys, values = torch.cat([att.jk, k], dim=1), torch.cat([att.jv, split_heads(v, heads)], dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        o = o.transpose(1, 2).flatten(2)                                              # (b, S, D)
        r = r + g1 * _plus(view.img_proj(o), _delta(lora, "img_out", o, g))
        h = view.img_mlp_hidden(torch.addcmul(sh2, view.img_norm2(r), 1 + sc2))
        r = r + g2 * _plus(view.img_mlp_out(h), _delta(lora, "img_mlp_out", h, g))
        self.store_r(r)
        return None


class XVerseSingle(Pathway):
    """XVerse in single block `block` for one run of batch rows (see the module docstring)."""

    inside = True

    def __init__(self, *, state: XVerseState, loras: Mapping[str, LoRASet], block: int, scales: XVerseScales,
                 refs_on: bool, cond_vec: Tensor | None, r_in: Tensor | None, store_r: Callable[[Tensor], None]) -> None:
        self.state, self.lora, self.scales = state, loras.get(f"s{block}"), scales
        self.refs_on, self.cond_vec, self.r_in, self.store_r = refs_on and r_in is not None, cond_vec, r_in, store_r

    def wrap_single_view(self, view: SingleBlockView) -> SingleBlockView:
        mult, lora = self.scales.latent_sblock, self.lora
        if lora is None or mult == 0:
            return view
        qkv_mlp = view.qkv_mlp

        def wrapped(x: Tensor):
            q, k, v, mlp = qkv_mlp(x)
            return (_plus(q, _delta(lora, "q", x, mult)), _plus(k, _delta(lora, "k", x, mult)),
                    _plus(v, _delta(lora, "v", x, mult)), mlp)

        return dataclasses.replace(view, qkv_mlp=wrapped, out=_linear_lora(view.out, lora, "out", mult))

    def single_attention(self, ctx: SingleContext, q: Tensor, k: Tensor, v: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor] | None:
        """q, k, v: (b, L+N, h, c) the block's own (normed, roped). -> the reference keys and values
        (b, S, h, c) and the bias of every row over [own keys | them] (1, 1, L+N, L+N+S); R is updated here."""
        if not self.refs_on:
            return None
        view, heads, st, lora, mult = ctx.view, ctx.view.heads, self.state, self.lora, self.scales.ref_sblock
        r = self.r_in.to(q.dtype)
        sh, sc, gate = mod_chunks(view.mod(self.cond_vec), 3)
        rn = torch.addcmul(sh, view.norm(r), 1 + sc)
        rq, rk, rv, mlp = view.qkv_mlp(rn)
        rq, rk, rv = (_plus(t, _delta(lora, s, rn, mult)) for t, s in ((rq, "q"), (rk, "k"), (rv, "v")))
        rq, rk = view.qk_norm(split_heads(rq, heads), split_heads(rk, heads))
        rq, rk, rv = apply_rope(rq, st.ref_rope), apply_rope(rk, st.ref_rope), split_heads(rv, heads)
        keys, values = torch.cat([k, rk], dim=1), torch.cat([v, rv], dim=1)
        o = F.scaled_dot_product_attention(rq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        y = torch.cat([o.transpose(1, 2).flatten(2), view.mlp_act(mlp)], dim=-1)
        self.store_r(r + gate * _plus(view.out(y), _delta(lora, "out", y, mult)))
        return rk, rv, self.bias(ctx.txt_len, q.shape[1], q.dtype, q.device)

    def bias(self, txt_len: int, rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(1, 1, L+N, L+N+S): 0 over the block's own keys; over the reference tokens, log lambda_j for
        reference j for image rows and bound prompt rows, -inf for the other prompt rows (and, with
        `confine`, for the image rows outside reference j's box). Built once per sequence shape, dtype
        and device, not per block call."""
        key = (txt_len, rows, dtype, str(device))
        if key not in self.state._bias:
            self.state._bias[key] = self._bias(txt_len, rows, dtype, device)
        return self.state._bias[key]

    def _bias(self, txt_len: int, rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        st = self.state
        t = st.tokens_per_ref
        per_ref = lambda_bias(st.lam, dtype).to(device)                                  # (r,)
        cols = per_ref.repeat_interleave(t)                                              # (S,)
        bias = cols[None].expand(rows, -1).clone()                                       # (L+N, S)
        blocked = torch.full_like(cols[None], -math.inf)                                 # (1, S)
        bound = st.text_cond.to(device).repeat_interleave(t, dim=1)                      # (L, S)
        bias[:txt_len] = torch.where(bound, cols[None], blocked)
        if st.confine is not None:
            if st.confine.shape != (rows - txt_len, st.num_refs):
                raise ValueError(f"XVerse confine: the mask covers {st.confine.shape[0]} image tokens (the canvas "
                                 f"size) but the image being sampled has {rows - txt_len}; sample at the canvas size "
                                 "or switch confine off")
            inside = st.confine.to(device).repeat_interleave(t, dim=1)                   # (N, S)
            bias[txt_len:] = torch.where(inside, bias[txt_len:], blocked)
        return torch.cat([bias.new_zeros(rows, rows), bias], dim=1)[None, None]


def xverse_loras(modules: Mapping[str, tuple[Tensor, Tensor, float]]) -> dict[str, LoRASet]:
    """XVerse's LoRA by block: {diffusers module path: (down (r, in), up (out, r), alpha/rank)} ->
    {"<double>" | "s<single>" | "x": LoRASet of its sites}. Raises ValueError for a module RefComp has
    no site for."""
    from ..released.lora_keys import site_of

    by_block: dict[str, dict[str, tuple[Tensor, Tensor, float]]] = {}
    for module, value in modules.items():
        where = site_of(module)
        if where is None:
            raise ValueError(f"XVerse LoRA: no RefComp site for module {module}")
        by_block.setdefault(where[0], {})[where[1]] = value
    out = {}
    for key, sites in by_block.items():
        lora = LoRASet({s: (int(d.shape[1]), int(u.shape[0]), int(d.shape[0]), float(m))
                        for s, (d, u, m) in sites.items()})
        with torch.no_grad():
            for s, (d, u, _) in sites.items():
                lora.deltas[s].down.weight.copy_(d)
                lora.deltas[s].up.weight.copy_(u)
        out[key] = lora
    return out
