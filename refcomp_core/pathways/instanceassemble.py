"""InstanceAssemble's layout branch (WEIGHTS_COMPAT §1.6, §1.7), after the block, exact.

Double layout block (after the standard block, on its outputs X, Lambda):
  m = (img_mod + LoRA)(vec), ml = (txt_mod + LoRA)(vec)                  6 chunks each
  X^ = LN(X)(1 + sc1) + sh1,  L^ = LN(Lambda)(1 + lsc1) + lsh1
  per instance k: [L^_k ; X^ of box k] attend among themselves (q/k/v + LoRA, QK-norm, RoPE
      with l_k at its box centre) -> o_lay_k, o_img_k
  X += g1 * scale * layout_forward((to_out + LoRA)(mean over boxes of o_img))   (covered tokens)
  X += g2 * (FF with LoRA on its last linear)(LN(X)(1 + sc2) + sh2)           (every image token)
  Lambda += lg1 * (to_add_out + LoRA)(o_lay);  Lambda += lg2 * FF_ctx(...)    (carried to later blocks)
Single layout block: per instance [Lambda_k ; X of box k] (post-block, un-normalised) through the
block's own AdaLN / q,k,v / MLP / output with LoRA, gate inside; X += scale * layout_forward(mean).

Every linear map commutes with the mean over overlapping boxes, so each covered token is
projected once and only the attention runs per instance (packed, `blocks.packed`). Tokens,
centres and the window follow upstream bit for bit (`ia_geometry`).

Axis letters: b batch, n instances, t covered tokens, S packed rows, h heads, c head channels, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..blocks.attention import split_heads
from ..blocks.packed import Packing, packed_attention
from ..geometry import TokenGrid
from ..rope import Rope
from ..state import CompositionState
from .assemble import lora_add, prepare_heads
from .base import DoubleContext, Pathway, SingleContext, mod_chunks
from .ia_geometry import box_tokens, dense_points

Tensor = torch.Tensor


@dataclass(frozen=True)
class IAIndex:
    """InstanceAssemble's token lists of one state on one grid: covered tokens cov (t,), the packing
    of [l_i ; box i] sequences, and the layout tokens' position ids (n, 3) = (0, row, col)."""

    cov: Tensor
    packing: Packing
    centre_ids: Tensor

    @property
    def t(self) -> int:
        return int(self.cov.numel())


def ia_index(state: CompositionState, grid: TokenGrid, dense_k: int, device: torch.device) -> IAIndex:
    """Built once per (state, grid, device) and cached in the state."""
    def build() -> IAIndex:
        boxes = box_tokens(dense_points(state.raw_boxes, dense_k), grid.h, grid.w)
        idx = [b.indices(grid.w) for b in boxes]
        flat = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
        cov, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        pos = list(torch.split(inverse, [i.numel() for i in idx]))
        centres = torch.tensor([[0.0, *b.centre] for b in boxes], dtype=torch.float32).reshape(-1, 3)
        return IAIndex(cov=cov.to(device), packing=Packing.build(pos, cov.numel(), device),
                       centre_ids=centres.to(device))
    return state.memo(("instanceassemble", grid, dense_k, str(device)), build)


def ia_step_active(step: int, num_steps: int, window: tuple[float, float]) -> bool:
    """InstanceAssemble's grounding window on the step index: int(start*T) <= step < int(end*T)
    (28 steps and (0, 0.3): steps 0-7; 4 steps: step 0)."""
    return int(window[0] * num_steps) <= step < int(window[1] * num_steps)


def _mlp(hidden: Callable[[Tensor], Tensor], out: Callable[[Tensor], Tensor], lora, site: str, x: Tensor) -> Tensor:
    h = hidden(x)
    return lora_add(lora, (site,), h, [out(h)])[0]


class IABranch(Pathway):
    """InstanceAssemble's branch in one layout block (double or single) for one run of batch rows.

    lam_in: the layout tokens Lambda entering this block (b, n, D); store_lam: keeps Lambda after it."""

    def __init__(self, *, adapter, state: CompositionState, index: IAIndex, key: str, scale: float,
                 centre_rope: Rope, lam_in: Tensor | None, store_lam: Callable[[Tensor], None]) -> None:
        self.adapter, self.state, self.index, self.key, self.scale = adapter, state, index, key, scale
        self.lora, self.out_linear = adapter.lora[key], adapter.assemble_gate[key]
        self.centre_rope, self.lam_in, self.store_lam = centre_rope, lam_in, store_lam

    def _lam(self, b: int, like: Tensor) -> Tensor:
        if self.lam_in is not None:
            return self.lam_in
        return self.state.layout_tokens.to(like.dtype)[None].expand(b, -1, -1)

    def _layout_forward(self, y: Tensor) -> Tensor:
        return self.out_linear(y.to(self.adapter.dtype)).to(y.dtype) * self.scale

    def after_double(self, ctx: DoubleContext, img: Tensor, txt: Tensor) -> tuple[Tensor, Tensor]:
        view, vec, lora, heads, idx = ctx.view, ctx.vec, self.lora, ctx.view.heads, self.index
        b, d, cov = img.shape[0], img.shape[-1], idx.cov
        lam = self._lam(b, img)                                                   # (b, n, D)
        sv = F.silu(vec)
        sh1, sc1, g1, sh2, sc2, g2 = mod_chunks(lora_add(lora, ("img_mod",), sv, [view.img_mod(vec)])[0], 6)
        lsh1, lsc1, lg1, lsh2, lsc2, lg2 = mod_chunks(lora_add(lora, ("txt_mod",), sv, [view.txt_mod(vec)])[0], 6)

        xn = torch.addcmul(sh1, view.img_norm1(img[:, cov]), 1 + sc1)            # (b, t, D)
        ln = torch.addcmul(lsh1, view.txt_norm1(lam), 1 + lsc1)                  # (b, n, D)
        q, k, v = lora_add(lora, ("img_q", "img_k", "img_v"), xn, list(view.img_qkv(xn)))
        lq, lk, lv = lora_add(lora, ("txt_q", "txt_k", "txt_v"), ln, list(view.txt_qkv(ln)))
        q, k = prepare_heads(q, k, view.img_qk_norm, heads, ctx.rope[ctx.txt_len + cov])
        lq, lk = prepare_heads(lq, lk, view.txt_qk_norm, heads, self.centre_rope)
        p = idx.packing
        o = packed_attention(p.pack(lq, q), p.pack(lk, k), p.pack(split_heads(lv, heads), split_heads(v, heads)), p)
        o_lay, o_img = (x.flatten(2) for x in p.unpack(o, idx.t))                 # (b, n, D), (b, t, D)

        o_img = lora_add(lora, ("img_out",), o_img, [view.img_proj(o_img)])[0]
        img = img.index_add(1, cov, g1 * self._layout_forward(o_img))
        img = img + g2 * _mlp(view.img_mlp_hidden, view.img_mlp_out, lora, "img_mlp_out",
                              torch.addcmul(sh2, view.img_norm2(img), 1 + sc2))

        lam = lam + lg1 * lora_add(lora, ("txt_out",), o_lay, [view.txt_proj(o_lay)])[0]
        lam = lam + lg2 * _mlp(view.txt_mlp_hidden, view.txt_mlp_out, lora, "txt_mlp_out",
                               torch.addcmul(lsh2, view.txt_norm2(lam), 1 + lsc2))
        self.store_lam(lam)
        return img, txt

    def after_single(self, ctx: SingleContext, x: Tensor) -> Tensor:
        view, vec, lora, heads, idx = ctx.view, ctx.vec, self.lora, ctx.view.heads, self.index
        b, L, cov = x.shape[0], ctx.txt_len, self.index.cov
        lam = self._lam(b, x)                                                     # (b, n, D)
        sh, sc, g = mod_chunks(lora_add(lora, ("mod",), F.silu(vec), [view.mod(vec)])[0], 3)
        zi = torch.addcmul(sh, view.norm(x[:, L + cov]), 1 + sc)                 # (b, t, D)
        zl = torch.addcmul(sh, view.norm(lam), 1 + sc)                           # (b, n, D)
        q, k, v, mlp = view.qkv_mlp(zi)
        q, k, v = lora_add(lora, ("q", "k", "v"), zi, [q, k, v])
        mlp = lora_add(lora, ("mlp_in",), zi, [mlp])[0]
        lq, lk, lv, _ = view.qkv_mlp(zl)
        lq, lk, lv = lora_add(lora, ("q", "k", "v"), zl, [lq, lk, lv])
        q, k = prepare_heads(q, k, view.qk_norm, heads, ctx.rope[L + cov])
        lq, lk = prepare_heads(lq, lk, view.qk_norm, heads, self.centre_rope)
        p = idx.packing
        o = packed_attention(p.pack(lq, q), p.pack(lk, k), p.pack(split_heads(lv, heads), split_heads(v, heads)), p)
        a = p.unpack(o, idx.t)[1].flatten(2)                                      # (b, t, D)
        y = torch.cat([a, view.mlp_act(mlp)], dim=-1)
        y = g * lora_add(lora, ("out",), y, [view.out(y)])[0]                    # (b, t, D)
        return x.index_add(1, L + cov, self._layout_forward(y))
