"""InstanceAssemble's box geometry, reproduced to the bit (WEIGHTS_COMPAT §1.4, §1.11).

Upstream stores each normalized box in float32, DenseSamples K x K points in float32
(x is the outer loop, both corners included), and then reads the box back from the first
and the last sample point. Token membership, the layout token's RoPE position and the
Fourier features all come from those points, so a grid-aligned box can lose its last
column or row to the float32 rounding of `x1 + (K-1) * ((x2 - x1) / (K-1))`. The
Fourier features are taken in `coord_dtype` (bf16 upstream).

Axis letters: n instances, p sample points (K*K), f frequencies, s sin/cos, t tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from einops import rearrange

Box = tuple[float, float, float, float]


def dense_points(boxes: Sequence[Box], k: int) -> torch.Tensor:
    """float32 DenseSample points, upstream's order: point u*k + v is (x1 + u*sx, y1 + v*sy).

    boxes: n normalized (x0, y0, x1, y1)  ->  (n, k*k*2) as [x, y] per point
    """
    b = torch.tensor([list(box) for box in boxes], dtype=torch.float32).reshape(-1, 4)
    steps = torch.arange(k, dtype=torch.float32)                                  # exact integers u, v
    sx, sy = (b[:, 2] - b[:, 0]) / (k - 1), (b[:, 3] - b[:, 1]) / (k - 1)          # (n,) float32
    xs = b[:, 0:1] + steps * sx[:, None]                                           # (n, u)
    ys = b[:, 1:2] + steps * sy[:, None]                                           # (n, v)
    grid = torch.stack(torch.broadcast_tensors(xs[:, :, None], ys[:, None, :]), dim=-1)   # (n, u, v, 2)
    return rearrange(grid, "n u v c -> n (u v c)")


def fourier(points: torch.Tensor, freqs: int, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """sin/cos features of every coordinate, upstream's layout (frequency, sin/cos, coordinate).

    points: (n, P) float32 -> (n, freqs * 2 * P) in `dtype` (the product and sin/cos run in it)
    """
    f = (temperature ** (torch.arange(freqs, dtype=torch.float32) / freqs)).to(points.device, dtype)   # (f,)
    angle = points.to(dtype)[..., None] * f                                                          # (n, P, f)
    feats = torch.stack([angle.sin(), angle.cos()], dim=-1)                                         # (n, P, f, s)
    return rearrange(feats, "n p f s -> n (f s p)")


@dataclass(frozen=True)
class IABoxTokens:
    """Token rows/cols of one box on a grid, as upstream computes them (half-open ranges)
    and its layout token's position (row, col), possibly half-integers."""

    r0: int
    r1: int
    c0: int
    c1: int
    centre: tuple[float, float]

    def indices(self, w: int) -> torch.Tensor:
        """Row-major flat token indices.  -> (t,) int64"""
        rows = torch.arange(self.r0, self.r1)
        cols = torch.arange(self.c0, self.c1)
        return rearrange(rows[:, None] * w + cols[None, :], "r c -> (r c)")


def box_tokens(points: torch.Tensor, h: int, w: int) -> list[IABoxTokens]:
    """Membership from the first and last DenseSample point: rows int(y1*h)..int(y2*h) and
    cols int(x1*w)..int(x2*w) (float32 products, truncated), a 1-token range when empty;
    the centre uses the un-widened ranges.

    points: (n, k*k*2) float32 from `dense_points`
    """
    first, last = points[:, :2], points[:, -2:]                                   # (n, 2) as (x, y)
    scale = torch.tensor([w, h], dtype=torch.float32)
    lo, hi = (first * scale).long().tolist(), (last * scale).long().tolist()
    out = []
    for (c0, r0), (c1, r1) in zip(lo, hi):
        centre = ((r0 + r1) / 2, (c0 + c1) / 2)
        c1 = c0 + 1 if c1 == c0 else c1
        r1 = r0 + 1 if r1 == r0 else r1
        out.append(IABoxTokens(r0=max(0, r0), r1=min(h, r1), c0=max(0, c0), c1=min(w, c1), centre=centre))
    return out
