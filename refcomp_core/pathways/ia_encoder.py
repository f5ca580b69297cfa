"""InstanceAssemble's layout encoder (WEIGHTS_COMPAT §1.5), the instance token of RefComp's
InstanceAssemble layout pathway.

    T  = text_embedder(CLIP-L pooled of "category, caption")          (n, D)
    F  = Fourier(DenseSample 6x6 points)                               (n, 1152)
    L0 = linears([T | F])                                              (n, D)

Module names match the released `layout_net.*` keys, so a converted file loads as it is.
With the identity pathway on, the reference's visual feature enters through a zero-init
projection added to L0, so a fresh RefComp adapter built on InstanceAssemble's weights
reproduces InstanceAssemble exactly.

Axis letters: n instances, c channels, D model width.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import RefCompConfig
from .ia_geometry import fourier

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class SiLUProjection(nn.Module):
    """Linear -> SiLU -> Linear (PixArt-alpha's text projection with SiLU)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class IALayoutEncoder(nn.Module):
    """Boxes (as DenseSample points) + caption embeds -> layout tokens L0 (n, D)."""

    def __init__(self, config: RefCompConfig) -> None:
        super().__init__()
        ia = config.instanceassemble
        d = config.hidden_size
        self.freqs, self.temperature, self.coord_dtype = ia.fourier_freqs, ia.fourier_temperature, ia.coord_dtype
        self.text_embedder = SiLUProjection(ia.text_dim, d, d)
        self.linears = SiLUProjection(d + ia.position_dim, d // 2, d)
        if config.identity:
            self.clip_to_visual = nn.Linear(config.clip_dim, config.visual_dim)
            nn.init.xavier_uniform_(self.clip_to_visual.weight)
            nn.init.zeros_(self.clip_to_visual.bias)
            self.visual = nn.Linear(config.visual_dim, d)
            nn.init.zeros_(self.visual.weight)               # zero-init: references add nothing at start
            nn.init.zeros_(self.visual.bias)

    def forward(self, points: torch.Tensor, text: torch.Tensor, visual: torch.Tensor | None = None) -> torch.Tensor:
        """points: (n, K*K*2) float32 DenseSample points; text: (n, text_dim) CLIP-L pooled;
        visual: (n, visual_dim) or None -> (n, D)"""
        dtype = self.linears.linear_1.weight.dtype
        pos = fourier(points, self.freqs, self.temperature, DTYPES[self.coord_dtype]).to(dtype)    # (n, 1152)
        token = self.linears(torch.cat([self.text_embedder(text.to(dtype)), pos], dim=-1))        # (n, D)
        if visual is not None and hasattr(self, "visual"):
            token = token + self.visual(visual.to(dtype))
        return token
