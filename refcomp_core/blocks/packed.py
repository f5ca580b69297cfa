"""Per-instance attention over packed sequences: instance i's sequence is [l_i ; the tokens of
box i], and instances never see each other. The sequences are packed end to end once per layout
and grid (`Packing`), so a block call does one gather in, the attentions, and one scatter out.

Axis letters: b batch, n instances, t covered tokens, S packed rows (n + sum of box sizes),
h heads, c head channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

Tensor = torch.Tensor


@dataclass(frozen=True)
class Packing:
    """index: (S,) rows into cat([instance rows (n), covered rows (t)]), segment i = [i ; n + pos_i];
    bounds: (start, stop) of each segment; token_rows: (S - n,) packed rows of image tokens and
    token_pos: (S - n,) their positions in the covered set; count: (t,) boxes per covered token."""

    index: Tensor
    bounds: tuple[tuple[int, int], ...]
    inst_rows: Tensor
    token_rows: Tensor
    token_pos: Tensor
    count: Tensor

    @classmethod
    def build(cls, pos: Sequence[Tensor], num_covered: int, device: torch.device | str = "cpu") -> "Packing":
        """pos[i]: (t_i,) positions of box i's tokens in the covered set."""
        n = len(pos)
        parts, bounds, inst_rows, token_rows, token_pos = [], [], [], [], []
        start = 0
        for i, p in enumerate(pos):
            parts.append(torch.cat([torch.tensor([i]), p.cpu() + n]))
            inst_rows.append(start)
            token_rows.append(torch.arange(start + 1, start + 1 + p.numel()))
            token_pos.append(p.cpu())
            bounds.append((start, start + 1 + p.numel()))
            start += 1 + p.numel()
        count = torch.bincount(torch.cat(token_pos), minlength=num_covered).float() if pos else torch.zeros(0)
        to = lambda t: t.to(device)   # noqa: E731
        cat = lambda ts: torch.cat(ts) if ts else torch.zeros(0, dtype=torch.long)   # noqa: E731
        return cls(index=to(cat(parts)), bounds=tuple(bounds), inst_rows=to(torch.tensor(inst_rows, dtype=torch.long)),
                   token_rows=to(cat(token_rows)), token_pos=to(cat(token_pos)), count=to(count))

    def pack(self, inst: Tensor, tokens: Tensor) -> Tensor:
        """inst: (b, n, ...), tokens: (b, t, ...) -> (b, S, ...)"""
        return torch.cat([inst, tokens], dim=1).index_select(1, self.index)

    def unpack(self, packed: Tensor, num_covered: int) -> tuple[Tensor, Tensor]:
        """(b, S, ...) -> instance rows (b, n, ...) and the mean over boxes per covered token (b, t, ...)."""
        inst = packed.index_select(1, self.inst_rows)
        acc = packed.new_zeros(packed.shape[0], num_covered, *packed.shape[2:])
        acc.index_add_(1, self.token_pos, packed.index_select(1, self.token_rows))
        shape = (1, -1) + (1,) * (packed.ndim - 2)
        return inst, acc / self.count.to(acc.dtype).view(shape)


def packed_attention(q: Tensor, k: Tensor, v: Tensor, packing: Packing) -> Tensor:
    """Softmax attention inside each packed segment.  q, k, v: (b, S, h, c) -> (b, S, h, c)

    Each segment is a contiguous slice, so the loop reads views (no per-box gathers)."""
    out = torch.empty_like(q)
    qh, kh, vh = (rearrange(a, "b s h c -> b h s c") for a in (q, k, v))
    for start, stop in packing.bounds:
        seg = F.scaled_dot_product_attention(qh[:, :, start:stop], kh[:, :, start:stop], vh[:, :, start:stop])
        out[:, start:stop] = rearrange(seg, "b h s c -> b s h c")
    return out
