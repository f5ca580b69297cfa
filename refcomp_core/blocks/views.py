"""Block views: the few parts of a FLUX block the RefComp math needs, as callables.

Each host (diffusers, ComfyUI) builds a view over its own block modules, so the
block math is written once. Axis letters: b batch, l tokens, h heads, c channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor
QKV = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class DoubleBlockView:
    """One double-stream block.

    img_mod / txt_mod: vec (..., D) -> Linear(SiLU(vec)) (..., 6D), chunks
        [shift1, scale1, gate1, shift2, scale2, gate2].
    *_norm1/2: the affine-free LayerNorms.  *_qkv: x (b, l, D) -> raw q, k, v (b, l, D).
    *_qk_norm: (q, k) each (b, l, h, c) -> RMS-normed (q, k).
    *_proj: attention out-projection (b, l, D) -> (b, l, D).  *_mlp: the MLP.
    """

    heads: int
    img_mod: Callable[[Tensor], Tensor]
    txt_mod: Callable[[Tensor], Tensor]
    img_norm1: Callable[[Tensor], Tensor]
    img_norm2: Callable[[Tensor], Tensor]
    txt_norm1: Callable[[Tensor], Tensor]
    txt_norm2: Callable[[Tensor], Tensor]
    img_qkv: Callable[[Tensor], QKV]
    txt_qkv: Callable[[Tensor], QKV]
    img_qk_norm: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    txt_qk_norm: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    img_proj: Callable[[Tensor], Tensor]
    txt_proj: Callable[[Tensor], Tensor]
    img_mlp: Callable[[Tensor], Tensor]
    txt_mlp: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SingleBlockView:
    """One single-stream block over [txt | img].

    mod: vec (..., D) -> Linear(SiLU(vec)) (..., 3D), chunks [shift, scale, gate].
    norm: the affine-free LayerNorm.
    The block body (q/k/v and MLP, attention, output linear) stays host code: the
    host passes it per call, since it needs the host's own rope format.
    """

    mod: Callable[[Tensor], Tensor]
    norm: Callable[[Tensor], Tensor]
