"""Box geometry on FLUX's token grid: DenseSample, Fourier features, token index
lists and soft masks.

Axis letters: n instances, p sample points, f Fourier frequencies, t tokens.
One token covers 16x16 px; token k sits at row k // w, col k % w. Image sizes that
are not multiples of 16 are padded by the host (as FLUX pads), so the content
covers `content_h x content_w` tokens (floats) of an `h x w` grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from .layout import TOKEN_PX


@dataclass(frozen=True)
class TokenGrid:
    """The image token grid of one latent size. `content_*` is the image extent in
    tokens (equal to the grid unless the host padded a non-multiple-of-16 size)."""

    h: int
    w: int
    content_h: float | None = None
    content_w: float | None = None

    def __post_init__(self) -> None:
        if self.h <= 0 or self.w <= 0:
            raise ValueError(f"TokenGrid needs a positive size, got {self.h}x{self.w}")
        object.__setattr__(self, "content_h", float(self.content_h or self.h))
        object.__setattr__(self, "content_w", float(self.content_w or self.w))

    @classmethod
    def from_pixels(cls, height: int, width: int) -> "TokenGrid":
        """Grid for an image of `height x width` px, padded up to whole tokens."""
        return cls(h=math.ceil(height / TOKEN_PX), w=math.ceil(width / TOKEN_PX),
                   content_h=height / TOKEN_PX, content_w=width / TOKEN_PX)

    @property
    def n(self) -> int:
        return self.h * self.w


def dense_sample(boxes: torch.Tensor, k: int) -> torch.Tensor:
    """K x K points uniformly inside each box, endpoints included.

    boxes: (n, 4) normalized [x0, y0, x1, y1]  ->  (n, p = k*k, 2) as (x, y)
    """
    steps = torch.linspace(0.0, 1.0, k, dtype=boxes.dtype, device=boxes.device) if k > 1 else \
        torch.full((1,), 0.5, dtype=boxes.dtype, device=boxes.device)
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps            # (n, k)
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps            # (n, k)
    xx = repeat(x, "n kx -> n ky kx", ky=k)
    yy = repeat(y, "n ky -> n ky kx", kx=k)
    return rearrange(torch.stack([xx, yy], dim=-1), "n ky kx c -> n (ky kx) c")


def fourier_embed(points: torch.Tensor, freqs: int, temperature: float = 100.0) -> torch.Tensor:
    """sin/cos Fourier features of 2-D points (GLIGEN-style geometric frequencies).

    points: (..., 2)  ->  (..., 4 * freqs), ordered [sin x, cos x, sin y, cos y] per frequency.
    """
    f = temperature ** (torch.arange(freqs, dtype=points.dtype, device=points.device) / freqs)   # (f,)
    angles = points[..., None, :] * f[:, None]                                                   # (..., f, 2)
    feats = torch.stack([angles.sin(), angles.cos()], dim=-1)                                    # (..., f, 2, 2)
    return rearrange(feats, "... f c s -> ... (f c s)")


def box_to_tokens(box: tuple[float, float, float, float], grid: TokenGrid) -> tuple[float, float, float, float]:
    """Normalized box -> (c0, r0, c1, r1) in token units of the grid."""
    x0, y0, x1, y1 = box
    return x0 * grid.content_w, y0 * grid.content_h, x1 * grid.content_w, y1 * grid.content_h


def box_token_indices(box: tuple[float, float, float, float], grid: TokenGrid) -> torch.Tensor:
    """Flat indices of the tokens whose centres lie inside the box (row-major;
    half-open, so boxes that share an edge do not share tokens).

    A box smaller than a token on this grid (possible when sampling smaller than
    the canvas) falls back to the single token under its centre, so every box
    owns at least one token.  -> (t,) int64
    """
    c0, r0, c1, r1 = box_to_tokens(box, grid)
    cols = [c for c in range(grid.w) if c0 <= c + 0.5 < c1]
    rows = [r for r in range(grid.h) if r0 <= r + 0.5 < r1]
    if not cols:
        cols = [min(grid.w - 1, max(0, int((c0 + c1) / 2)))]
    if not rows:
        rows = [min(grid.h - 1, max(0, int((r0 + r1) / 2)))]
    r = torch.tensor(rows, dtype=torch.long)
    c = torch.tensor(cols, dtype=torch.long)
    return rearrange(r[:, None] * grid.w + c[None, :], "r c -> (r c)")


def soft_mask(box: tuple[float, float, float, float], grid: TokenGrid, margin: float) -> torch.Tensor:
    """Soft mask of one box over the grid: 1 on the box's tokens, a Gaussian falloff
    reaching 0 at `margin` tokens from the box edge, exactly 0 beyond.

    margin: in tokens; 0 gives the hard box.  -> (t = h*w,) float32
    """
    hard = torch.zeros(grid.n)
    hard[box_token_indices(box, grid)] = 1.0
    if margin <= 0:
        return hard
    c0, r0, c1, r1 = box_to_tokens(box, grid)
    cy = torch.arange(grid.h, dtype=torch.float32) + 0.5
    cx = torch.arange(grid.w, dtype=torch.float32) + 0.5
    dy = (r0 - cy).clamp(min=0) + (cy - r1).clamp(min=0)                   # (h,)
    dx = (c0 - cx).clamp(min=0) + (cx - c1).clamp(min=0)                   # (w,)
    dist = rearrange((dy[:, None] ** 2 + dx[None, :] ** 2).sqrt(), "h w -> (h w)")
    sigma = margin / 3.0
    falloff = torch.exp(-0.5 * (dist / sigma) ** 2) * (dist < margin)
    return torch.maximum(hard, falloff)
