"""RefComp's identity pathway: per-token AdaLN modulation of FG boxes (DESIGN §3.1 step 2,
§3.2) and the feedback bridge (M5, §3.1 step 5).

Image tokens use mod(vec) + sum_i w_i(tok) (mod(y_i) - mod(vec)). Only tokens in an FG
support (`cov`) differ from the base. Two hot paths (`blocks.hotpath`), equal up to rounding:
- loop (CPU): the deltas are blended for covered tokens only and added with `index_add`;
- fused (CUDA): one matmul [w | 1] (tokens, g + 1) x [delta ; base] (g + 1, k*D) gives every
  token's parameters at once, no large-index scatters. Rows outside every support are
  (0, ..., 0, 1), so those tokens get exactly the base modulation on both paths.
Axis letters: b batch, l stream tokens, t covered tokens, g FG instances, k chunks, c channels, D width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from einops import einsum

from ..adapter import RefCompAdapter
from ..blocks import hotpath
from ..state import CompositionState, GridIndex
from .base import DoubleContext, ModRequest, Pathway, SingleContext

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenMod:
    """base: (b, k*D) chunks of mod(vec); delta: (b, g, k*D) of mod(y_i) - mod(vec) (None: no
    per-token part); request: where and how much each delta applies; fused: take the dense path.

    FLUX's AdaLN chunks come in threes (shift, scale, gate): chunk j is a scale when j % 3 == 1."""

    base: Tensor
    delta: Tensor | None
    request: ModRequest | None
    dim: int
    fused: bool = False
    _dense: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def _slice(self, j: int) -> slice:
        return slice(j * self.dim, (j + 1) * self.dim)

    def chunk(self, j: int) -> tuple[Tensor, Tensor | None]:
        """Loop path: base chunk (b, 1, D) and per-covered-token delta (b, t, D) of chunk j."""
        sl = self._slice(j)
        base = self.base[:, None, sl]
        if self.delta is None:
            return base, None
        delta = einsum(self.request.weights.to(self.delta.dtype), self.delta[..., sl], "t g, b g c -> b t c")
        return base, delta

    def params(self, length: int) -> Tensor:
        """Fused path: every token's parameters, 1 + scale in the scale chunks.  -> (b, l, k*D)
        Built once per block call (one matmul) and sliced by the calls that follow."""
        if length not in self._dense:
            b, k = self.base.shape[0], self.base.shape[-1] // self.dim
            aug = torch.cat([self.delta, self.base[:, None]], dim=1)                 # (b, g + 1, kD)
            aug[:, -1].view(b, k, self.dim)[:, 1::3].add_(1)                         # 1 + scale, as the loop path
            self._dense[length] = torch.matmul(self._blend(length, aug.dtype), aug)   # (b, l, kD)
        return self._dense[length]

    def _blend(self, length: int, dtype: torch.dtype) -> Tensor:
        r = self.request
        if r.blend is not None:
            return r.blend(length, r.offset, dtype)
        g = r.weights.shape[1]
        m = torch.zeros(length, g + 1, dtype=dtype, device=self.base.device)
        m[r.cov + r.offset, :g] = r.weights.to(dtype)
        m[:, g] = 1
        return m

    def modulate(self, x: Tensor, shift: int, scale: int) -> Tensor:
        """x * (1 + scale) + shift with per-token parameters.  x: (b, l, D) -> (b, l, D)"""
        if scale % 3 != 1:
            raise ValueError(f"TokenMod.modulate: chunk {scale} is not a scale chunk of FLUX's AdaLN")
        if self.delta is not None and self.fused:
            p = self.params(x.shape[1])
            return torch.addcmul(p[..., self._slice(shift)], x, p[..., self._slice(scale)])
        sh, dsh = self.chunk(shift)
        sc, dsc = self.chunk(scale)
        out = torch.addcmul(sh, x, 1 + sc)
        if dsh is None:
            return out
        cov = self._cov()
        xc = x[:, cov]
        return out.index_add_(1, cov, torch.addcmul(dsh, xc, dsc))             # out is fresh: in place

    def gate(self, y: Tensor, gate: int) -> Tensor:
        """y * gate with per-token gates.  y: (b, l, D) -> (b, l, D)"""
        if self.delta is not None and self.fused:
            return y * self.params(y.shape[1])[..., self._slice(gate)]
        g, dg = self.chunk(gate)
        out = y * g
        if dg is None:
            return out
        cov = self._cov()
        return out.index_add_(1, cov, y[:, cov] * dg)                           # out is fresh: in place

    def _cov(self) -> Tensor:
        r = self.request
        return r.cov + r.offset if r.offset else r.cov


def token_mod(mod: Callable[[Tensor], Tensor], vec: Tensor, request: ModRequest | None) -> TokenMod:
    """A `TokenMod` from a block's modulation.  mod: vec -> Linear(SiLU(vec)); vec: (b, D).
    The hot path follows vec's device (`blocks.hotpath`)."""
    base = mod(vec)                                                        # (b, kD)
    if request is None or request.cov.numel() == 0:
        return TokenMod(base, None, None, vec.shape[-1])
    delta = mod(request.y) - base[:, None]                                 # (b, g, kD)
    return TokenMod(base, delta, request, vec.shape[-1], fused=hotpath.fused(vec.device))


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
        return ModRequest(ctx.fg_y, self.index.mod_cov, self.index.mod_w, blend=self.index.blend_matrix)

    def after_attention(self, ctx: DoubleContext, img: Tensor) -> None:
        """M5: mean of the updated image tokens inside each FG box -> bridge -> next block."""
        st, idx = self.state, self.index
        b, _, d = img.shape
        if hotpath.fused(img.device):                                          # one matmul, no scatter
            pool = idx.pool_matrix(img.dtype)                                   # (g, N)
            pooled = torch.matmul(pool, img[:, :pool.shape[1]])                  # (b, g, D)
        else:
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
        return ModRequest(y, self.index.mod_cov, self.index.mod_w, blend=self.index.blend_matrix)
