"""Tiny image encoders standing in for CLIP-L (image embeds) and DINOv2 (CLS + patches).

A small CNN: 64x64 px -> an 8x8 grid of patch features (one per 8x8 px patch, like
DINOv2's 14-px patches), a CLS = LayerNorm(mean of the patches), and for the CLIP role
a linear projection of the CLS. Both are briefly pretrained (`pretrain.pretrain_encoder`)
to classify the object's attributes and then frozen: the CLIP stand-in on colour + shape
(the coarse "what" of a reference), the DINOv2 stand-in on colour + shape + texture
(identity). Random weights are the fallback before pretraining (documented in TOY.md).

The call surface mirrors transformers: `model(pixel_values=x)` with x normalised as the
real encoders expect (CLIP / ImageNet mean and std), outputs `image_embeds`,
`pooler_output`, `last_hidden_state` = [CLS | patches], and `config.image_size`,
`config.patch_size`, `config.hidden_size`, `config.projection_dim`.

Axis letters: b batch, P patches, D width, H W pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROLE_HEADS: dict[str, tuple[str, ...]] = {"clip": ("colour", "shape"), "dino": ("colour", "shape", "texture")}


@dataclass(frozen=True)
class ToyVisionConfig:
    role: Literal["clip", "dino"] = "dino"
    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 64
    projection_dim: int = 64
    width: int = 16

    def __post_init__(self) -> None:
        if self.role not in ROLE_HEADS:
            raise ValueError(f"ToyVisionConfig.role must be 'clip' or 'dino', got {self.role!r}")
        if self.image_size % self.patch_size or self.patch_size != 8:
            raise ValueError("ToyVisionConfig: the CNN downsamples by 8; use patch_size=8 and an image_size "
                             f"divisible by 8 (got {self.image_size}/{self.patch_size})")

    @property
    def mean(self) -> tuple[float, ...]:
        return CLIP_MEAN if self.role == "clip" else IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, ...]:
        return CLIP_STD if self.role == "clip" else IMAGENET_STD


@dataclass(frozen=True)
class VisionOutput:
    last_hidden_state: torch.Tensor     # (b, 1 + P, D)  [CLS | patches]
    pooler_output: torch.Tensor         # (b, D)
    image_embeds: torch.Tensor          # (b, projection_dim)


class ToyImageEncoder(nn.Module):
    def __init__(self, config: ToyVisionConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ToyVisionConfig()
        w = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),                    # H/2
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, cfg.hidden_size, 4, stride=4), nn.GELU(),                 # H/8
            nn.Conv2d(cfg.hidden_size, cfg.hidden_size, 3, padding=1))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) in [0, 1] -> pixel_values as the forward expects."""
        m = torch.tensor(self.config.mean, device=images.device, dtype=images.dtype)[None, :, None, None]
        s = torch.tensor(self.config.std, device=images.device, dtype=images.dtype)[None, :, None, None]
        return (images - m) / s

    def forward(self, pixel_values: torch.Tensor) -> VisionOutput:
        """pixel_values (b, 3, H, W), normalised -> VisionOutput"""
        feat = self.stem(pixel_values)                                                  # (b, D, H/8, W/8)
        patches = rearrange(feat, "b d h w -> b (h w) d")                               # (b, P, D)
        cls = self.norm(patches.mean(dim=1))                                            # (b, D)
        tokens = torch.cat([cls[:, None], self.norm(patches)], dim=1)                   # (b, 1 + P, D)
        return VisionOutput(last_hidden_state=tokens, pooler_output=cls, image_embeds=self.proj(cls))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) in [0, 1] -> the role's feature: CLIP image embeds or DINO CLS (b, D)."""
        out = self(self.normalise(images))
        return out.image_embeds if self.config.role == "clip" else out.pooler_output
