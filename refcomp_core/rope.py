"""FLUX's rotary position embedding in one canonical form both hosts convert to.

Axis letters: b batch (or 1), l sequence, h heads, d head_dim / 2 (rotation pairs).
A `Rope` holds cos/sin of shape (b, l, d); pairs are interleaved
(x[2i], x[2i+1]) as in FLUX, diffusers and ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from einops import rearrange


@dataclass(frozen=True)
class Rope:
    cos: torch.Tensor   # (b, l, d) float32
    sin: torch.Tensor   # (b, l, d) float32

    @property
    def turn(self) -> torch.Tensor:
        """e^{iθ} per pair, built once per Rope (q and k share it).  -> (b, l, 1, d) complex64

        Cached in the instance outside torch.compile; inside a compiled region it is plain graph math
        (functools.cached_property takes a lock that dynamo cannot trace: a graph break per call)."""
        if torch.compiler.is_compiling():
            return torch.complex(self.cos, self.sin)[:, :, None, :]
        turn = self.__dict__.get("_turn")
        if turn is None:
            turn = torch.complex(self.cos, self.sin)[:, :, None, :]
            object.__setattr__(self, "_turn", turn)
        return turn

    def __getitem__(self, index: slice | torch.Tensor) -> "Rope":
        """Select sequence positions (a slice or a LongTensor of positions)."""
        return Rope(self.cos[:, index], self.sin[:, index])

    @staticmethod
    def cat(parts: Sequence["Rope"]) -> "Rope":
        b = max(p.cos.shape[0] for p in parts)
        return Rope(torch.cat([p.cos.expand(b, -1, -1) for p in parts], dim=1),
                    torch.cat([p.sin.expand(b, -1, -1) for p in parts], dim=1))

    def rows(self, start: int, stop: int) -> "Rope":
        """Batch rows [start, stop) (a shared batch-1 rope is returned as is)."""
        if self.cos.shape[0] == 1:
            return self
        return Rope(self.cos[start:stop], self.sin[start:stop])


def rope_from_ids(ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> Rope:
    """FLUX RoPE for position ids.

    ids: (l, n_axes) float positions (fractional allowed, e.g. a box centre)
    -> Rope with cos/sin (1, l, sum(axes_dim) / 2)
    """
    angles = []
    for axis, dim in enumerate(axes_dim):
        scale = torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim
        omega = 1.0 / (theta ** scale)                                          # (dim/2,)
        angles.append(ids[:, axis].to(torch.float64)[:, None] * omega[None])    # (l, dim/2)
    angle = torch.cat(angles, dim=-1)
    return Rope(angle.cos().float()[None], angle.sin().float()[None])


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate interleaved pairs of q or k.

    x: (b, l, h, 2d) -> (b, l, h, 2d), computed in float32 and cast back.
    Each pair is a complex number times e^{iθ}: the same products and sums as
    (x0 cos − x1 sin, x0 sin + x1 cos), bit for bit, in one fused kernel
    (tests/test_rope.py checks both).
    """
    pairs = rearrange(x.float(), "b l h (d two) -> b l h d two", two=2).contiguous()
    if torch.compiler.is_compiling():       # inductor has no complex code generation: the same sums, real
        x0, x1 = pairs.unbind(-1)
        cos, sin = (rearrange(a, "b l d -> b l 1 d").to(x.device) for a in (rope.cos, rope.sin))
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    else:
        out = torch.view_as_real(torch.view_as_complex(pairs) * rope.turn.to(x.device))
    return rearrange(out, "b l h d two -> b l h (d two)").to(x.dtype)
