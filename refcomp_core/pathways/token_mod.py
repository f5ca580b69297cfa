"""RefComp's identity pathway: per-token AdaLN modulation of FG boxes (DESIGN §3.1 step 2,
§3.2) and the feedback bridge (M5, §3.1 step 5).

Image tokens use mod(vec) + sum_i w_i(tok) (mod(y_i) - mod(vec)). Only tokens in an FG
support (`cov`) differ from the base, so the deltas are stored for those only.
Axis letters: b batch, t covered tokens, g FG instances, c channels, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import einsum

from ..adapter import RefCompAdapter
from ..state import CompositionState, GridIndex
from .base import DoubleContext, ModRequest, Pathway, SingleContext

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenMod:
    """base: (b, k*D) chunks of mod(vec); delta: (b, g, k*D) of mod(y_i) - mod(vec);
    cov: (t,) token indices (into the stream); weights: (t, g)."""

    base: Tensor
    delta: Tensor | None
    cov: Tensor | None
    weights: Tensor | None
    dim: int

    def chunk(self, j: int) -> tuple[Tensor, Tensor | None]:
        """Base chunk (b, 1, D) and per-covered-token delta (b, t, D) of chunk j."""
        sl = slice(j * self.dim, (j + 1) * self.dim)
        base = self.base[:, None, sl]
        if self.delta is None:
            return base, None
        delta = einsum(self.weights.to(self.delta.dtype), self.delta[..., sl], "t g, b g c -> b t c")
        return base, delta

    def modulate(self, x: Tensor, shift: int, scale: int) -> Tensor:
        """x * (1 + scale) + shift with per-token parameters.  x: (b, l, D) -> (b, l, D)"""
        sh, dsh = self.chunk(shift)
        sc, dsc = self.chunk(scale)
        out = torch.addcmul(sh, x, 1 + sc)
        if dsh is None:
            return out
        xc = x[:, self.cov]
        return out.index_add_(1, self.cov, torch.addcmul(dsh, xc, dsc))      # out is fresh: in place

    def gate(self, y: Tensor, gate: int) -> Tensor:
        """y * gate with per-token gates.  y: (b, l, D) -> (b, l, D)"""
        g, dg = self.chunk(gate)
        out = y * g
        if dg is None:
            return out
        return out.index_add_(1, self.cov, y[:, self.cov] * dg)              # out is fresh: in place


def token_mod(mod: Callable[[Tensor], Tensor], vec: Tensor, request: ModRequest | None) -> TokenMod:
    """A `TokenMod` from a block's modulation.  mod: vec -> Linear(SiLU(vec)); vec: (b, D)."""
    base = mod(vec)                                                        # (b, kD)
    if request is None or request.cov.numel() == 0:
        return TokenMod(base, None, None, None, vec.shape[-1])
    delta = mod(request.y) - base[:, None]                                 # (b, g, kD)
    return TokenMod(base, delta, request.cov, request.weights, vec.shape[-1])


class FgModulation(Pathway):
    """The identity pathway of one block call: FG image tokens get mod(vec + alpha * offset).

    Double block b: y_i = vec + strength * alpha_i * off_{i,b}, off = base + P_b(base),
    base = shared_i + fb_{i,b}; after the attention, the pooled FG boxes give fb_{i,b+1}.
    Single block: y_i = vec + strength * g_s * alpha_i * shared_i (g_s zero-init).
    """

    inside = True

    def __init__(self, *, adapter: RefCompAdapter, state: CompositionState, index: GridIndex, block: int,
                 strength: float, feedback: Tensor | None = None,
                 store_feedback: Callable[[Tensor], None] | None = None) -> None:
        self.adapter, self.state, self.index, self.block = adapter, state, index, block
        self.strength, self.feedback, self.store_feedback = strength, feedback, store_feedback

    def img_modulation(self, ctx: DoubleContext) -> ModRequest:
        vec, st = ctx.vec, self.state
        base = st.shared.to(vec.dtype)[None]                                   # (1, g, D)
        if self.feedback is not None:
            base = base + self.feedback.to(vec.dtype)                          # (b, g, D)
        off = self.adapter.modulation.block_offset(self.block, base.to(self.adapter.dtype)).to(vec.dtype)
        scale = (self.strength * st.alpha_fg.to(vec.dtype))[None, :, None]    # (1, g, 1)
        ctx.fg_y = vec[:, None] + scale * off                                  # (b, g, D)
        return ModRequest(ctx.fg_y, self.index.mod_cov, self.index.mod_w)

    def after_attention(self, ctx: DoubleContext, img: Tensor) -> None:
        """M5: mean of the updated image tokens inside each FG box -> bridge -> next block."""
        st, idx = self.state, self.index
        b, _, d = img.shape
        pooled = img.new_zeros(b, st.n_fg, d).index_add(1, idx.fg_seg, img[:, idx.fg_tok])
        pooled = pooled / idx.fg_size.to(img.dtype)[None, :, None]
        fb = self.adapter.bridge(self.block, pooled.to(self.adapter.dtype)).to(img.dtype)    # (b, g, D)
        if self.store_feedback is not None:
            self.store_feedback(fb)

    def single_modulation(self, ctx: SingleContext) -> ModRequest:
        vec, st = ctx.vec, self.state
        gate = self.adapter.single_gate.gate[self.block]
        scale = (self.strength * gate * st.alpha_fg).to(vec.dtype)[None, :, None]    # (1, g, 1)
        y = vec[:, None] + scale * st.shared.to(vec.dtype)[None]                     # (b, g, D)
        return ModRequest(y, self.index.mod_cov, self.index.mod_w)
