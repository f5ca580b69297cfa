"""Per-instance attention over packed sequences: instance i's sequence is [l_i ; the tokens of
box i], and instances never see each other. The sequences are packed end to end once per layout
and grid (`Packing`), so a block call does one gather in per tensor, the attention, and one
scatter out.

The attention takes the device's hot path (`hotpath`): on CUDA one `flex_attention` call with a
document block mask built once per layout and device (cached on the packing); elsewhere a loop of
SDPA calls over contiguous slices (the segments are views, so no per-box gathers).

Axis letters: b batch, n instances, t covered tokens, S packed rows (n + sum of box sizes, padded
to a multiple of `BLOCK`), h heads, c head channels.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from . import hotpath

Tensor = torch.Tensor
log = logging.getLogger(__name__)
BLOCK = 128          # flex_attention's block size: packed lengths are padded to a multiple of it


@dataclass(frozen=True, eq=False)
class Packing:
    """The packed layout of one state on one grid and device.

    gather: (S,) covered-token row read into each packed row (instance and padding rows read row 0
        and are overwritten or ignored); inst_rows: (n,) the packed row of each l_i;
    scatter: (S,) covered-token position of each packed row, `num_covered` (a dummy row) for
        instance and padding rows; count: (t,) boxes per covered token;
    doc: (S,) segment of each packed row (-1: padding); bounds: (start, stop) of each segment.
    """

    gather: Tensor
    inst_rows: Tensor
    scatter: Tensor
    count: Tensor
    doc: Tensor
    bounds: tuple[tuple[int, int], ...]
    num_covered: int
    _masks: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def length(self) -> int:
        return int(self.doc.numel())

    @classmethod
    def build(cls, pos: Sequence[Tensor], num_covered: int, device: torch.device | str = "cpu") -> "Packing":
        """pos[i]: (t_i,) positions of box i's tokens in the covered set."""
        n = len(pos)
        sizes = [int(p.numel()) for p in pos]
        starts = torch.tensor([0] + sizes, dtype=torch.long)[:-1].cumsum(0) + torch.arange(n)   # (n,) row of l_i
        total = n + sum(sizes)
        length = -(-total // BLOCK) * BLOCK if total else 0
        gather = torch.zeros(length, dtype=torch.long)
        scatter = torch.full((length,), num_covered, dtype=torch.long)
        doc = torch.full((length,), -1, dtype=torch.long)
        bounds = []
        for i, (p, start) in enumerate(zip(pos, starts.tolist())):
            rows = slice(start + 1, start + 1 + sizes[i])
            gather[rows] = p.cpu()
            scatter[rows] = p.cpu()
            doc[start:rows.stop] = i
            bounds.append((start, rows.stop))
        count = torch.bincount(torch.cat([p.cpu() for p in pos]), minlength=num_covered).float() if pos \
            else torch.zeros(0)
        to = lambda t: t.to(device)   # noqa: E731
        return cls(gather=to(gather), inst_rows=to(starts), scatter=to(scatter), count=to(count), doc=to(doc),
                   bounds=tuple(bounds), num_covered=num_covered)

    def pack(self, inst: Tensor | None, tokens: Tensor) -> Tensor:
        """inst: (b, n, ...) or None (those rows then hold a copy of token 0: for queries whose
        outputs are not read), tokens: (b, t, ...) -> (b, S, ...)"""
        packed = tokens.index_select(1, self.gather)
        return packed if inst is None else packed.index_copy_(1, self.inst_rows, inst.to(packed.dtype))

    def mean_over_boxes(self, packed: Tensor) -> Tensor:
        """(b, S, ...) -> the mean over boxes of each covered token's rows (b, t, ...)."""
        acc = packed.new_zeros(packed.shape[0], self.num_covered + 1, *packed.shape[2:])
        acc.index_add_(1, self.scatter, packed)                      # instance / padding rows -> dummy row t
        shape = (1, -1) + (1,) * (packed.ndim - 2)
        return acc[:, :self.num_covered] / self.count.to(acc.dtype).view(shape)

    def unpack(self, packed: Tensor, num_covered: int | None = None) -> tuple[Tensor, Tensor]:
        """(b, S, ...) -> instance rows (b, n, ...) and the mean over boxes per covered token (b, t, ...)."""
        return packed.index_select(1, self.inst_rows), self.mean_over_boxes(packed)

    def block_mask(self, device: torch.device) -> Any:
        """flex_attention's document mask (rows attend within their segment), built once per device."""
        key = str(device)
        if key not in self._masks:
            from torch.nn.attention.flex_attention import create_block_mask
            doc = self.doc.to(device)

            def same_segment(b, h, q, kv):
                return doc[q] == doc[kv]

            self._masks[key] = create_block_mask(same_segment, B=None, H=None, Q_LEN=self.length,
                                                 KV_LEN=self.length, device=device)
        return self._masks[key]


def packed_attention(q: Tensor, k: Tensor, v: Tensor, packing: Packing) -> Tensor:
    """Softmax attention inside each packed segment.  q, k, v: (b, S, h, c) -> (b, S, h, c)

    Padding rows come back as zeros (loop) or garbage (fused) that `mean_over_boxes` ignores."""
    qh, kh, vh = (rearrange(a, "b s h c -> b h s c") for a in (q, k, v))
    if hotpath.fused(q.device) and packing.length and _flex_ok():
        try:
            return rearrange(_fused(qh, kh, vh, packing), "b h s c -> b s h c")
        except Exception as err:          # no triton / unsupported GPU: the loop is always available
            if q.device.type != "cuda" or isinstance(err, torch.OutOfMemoryError):
                raise
            _FLEX["broken"] = True
            log.warning("RefComp: flex_attention failed on %s (%s: %s); per-instance attention falls back to a "
                        "loop of SDPA calls (slower on GPU)", q.device, type(err).__name__, err)
    out = torch.empty_like(q)
    for start, stop in packing.bounds:
        seg = F.scaled_dot_product_attention(qh[:, :, start:stop], kh[:, :, start:stop], vh[:, :, start:stop])
        out[:, start:stop] = rearrange(seg, "b h s c -> b s h c")
    out[:, packing.bounds[-1][1] if packing.bounds else 0:].zero_()          # padding rows
    return out


_FLEX: dict[str, Any] = {"broken": False}


def _flex_ok() -> bool:
    return not _FLEX["broken"] and hotpath.has_flex_attention()


def _fused(qh: Tensor, kh: Tensor, vh: Tensor, packing: Packing) -> Tensor:
    """All segments in one call.  (b, h, S, c) each -> (b, h, S, c)

    CUDA: compiled flex_attention with the cached block mask. Elsewhere (tests of this path on
    CPU): eager flex_attention, the same math; CPU flex has no backward, so with gradients a dense
    SDPA with the block-diagonal mask stands in (O(S^2) memory: for small tests only)."""
    device = qh.device
    if device.type != "cuda" and torch.is_grad_enabled() and any(a.requires_grad for a in (qh, kh, vh)):
        doc = packing.doc.to(device)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=doc[:, None] == doc[None, :])
    return _flex(device)(qh, kh, vh, block_mask=packing.block_mask(device))


def _flex(device: torch.device) -> Callable[..., Tensor]:
    """Compiled flex_attention on CUDA (one fused kernel); eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention
    if torch.compiler.is_compiling():           # already inside a compiled region: trace it there
        return flex_attention
    if device.type == "cuda":
        if "compiled" not in _FLEX:
            _FLEX["compiled"] = torch.compile(flex_attention)
        return _FLEX["compiled"]

    def eager(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)
    return eager
