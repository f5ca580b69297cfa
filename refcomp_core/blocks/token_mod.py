"""Per-token AdaLN modulation (DESIGN §3.1 step 2).

Image tokens use mod(vec) + sum_i w_i(tok) (mod(y_i) - mod(vec)). Only tokens in an
FG support (`cov`) differ from the base, so the deltas are stored for those only.
Axis letters: b batch, t covered tokens, g FG instances, c channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenMod:
    """base: (b, k*D) chunks of mod(vec); delta: (b, g, k*D) of mod(y_i) - mod(vec);
    cov: (t,) token indices (already offset into the sequence); weights: (t, g)."""

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


def token_mod(mod: "callable", vec: Tensor, y: Tensor | None, cov: Tensor | None, weights: Tensor | None,
              chunks: int) -> tuple[TokenMod, Tensor, Tensor | None]:
    """Build a `TokenMod` from a block's modulation.

    mod: vec -> Linear(SiLU(vec)); vec: (b, D); y: (b, g, D) per-FG conditioning or None.
    Returns the TokenMod, the base mod (b, k*D) and mod(y) (b, g, k*D) or None.
    """
    base = mod(vec)                                                        # (b, kD)
    if y is None or cov is None or cov.numel() == 0:
        return TokenMod(base, None, None, None, vec.shape[-1]), base, None
    mod_y = mod(y)                                                         # (b, g, kD)
    delta = mod_y - base[:, None]
    return TokenMod(base, delta, cov, weights, vec.shape[-1]), base, mod_y
