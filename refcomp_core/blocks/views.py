"""Block views: the few parts of a FLUX block the RefComp math needs, as callables.

Each host (diffusers, ComfyUI) builds a view over its own block modules, so the
block math is written once. Axis letters: b batch, l tokens, h heads, c channels, D width.
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
    *_proj: attention out-projection (b, l, D) -> (b, l, D).
    *_mlp_hidden: the MLP up to its activation (b, l, D) -> (b, l, M); *_mlp_out: its last
        linear (b, l, M) -> (b, l, D). Split so a branch can add a LoRA delta to the last linear.
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
    img_mlp_hidden: Callable[[Tensor], Tensor]
    img_mlp_out: Callable[[Tensor], Tensor]
    txt_mlp_hidden: Callable[[Tensor], Tensor]
    txt_mlp_out: Callable[[Tensor], Tensor]

    def img_mlp(self, x: Tensor) -> Tensor:
        return self.img_mlp_out(self.img_mlp_hidden(x))

    def txt_mlp(self, x: Tensor) -> Tensor:
        return self.txt_mlp_out(self.txt_mlp_hidden(x))


@dataclass(frozen=True)
class SingleBlockView:
    """One single-stream block over [txt | img].

    mod: vec (..., D) -> Linear(SiLU(vec)) (..., 3D), chunks [shift, scale, gate].
    norm: the affine-free LayerNorm.
    qkv_mlp: x (b, l, D) -> raw q, k, v (b, l, D) and the MLP input before its activation (b, l, M).
    mlp_act: the MLP activation (b, l, M) -> (b, l, M').  qk_norm: as in the double block.
    out: the output linear over [attention (D) | MLP (M')] -> (b, l, D).
    """

    heads: int
    mod: Callable[[Tensor], Tensor]
    norm: Callable[[Tensor], Tensor]
    qkv_mlp: Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]
    mlp_act: Callable[[Tensor], Tensor]
    qk_norm: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    out: Callable[[Tensor], Tensor]
