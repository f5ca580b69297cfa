"""Pixel packing instead of a VAE.

FLUX sees a VAE latent (8x down, C channels) packed 2x2 into tokens of 4C channels.
The toy replaces the VAE by a pixel-unshuffle by 4 (`PixelCodec`, VAE-shaped: same
`encode(x).latent_dist.mode()` / `decode(z).sample` / `config.scaling_factor` surface),
then the standard FLUX 2x2 packing, so one token holds an 8x8 px patch of 3 x 64 = 192
channels. Anything written against diffusers' AutoencoderKL + FLUX packing runs unchanged.

Axis letters: b batch, c channels, H W pixels, h w latent or token grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

CODEC_FACTOR = 4                 # pixels per latent cell (a FLUX VAE has 8)
PATCH = 2                        # FLUX packs 2x2 latent cells into one token
PIXELS_PER_TOKEN = CODEC_FACTOR * PATCH


@dataclass(frozen=True)
class CodecConfig:
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    latent_channels: int = 3 * CODEC_FACTOR ** 2


@dataclass(frozen=True)
class _Posterior:
    latent: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.latent

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent


@dataclass(frozen=True)
class EncodeOutput:
    latent_dist: _Posterior


@dataclass(frozen=True)
class DecodeOutput:
    sample: torch.Tensor


class PixelCodec(nn.Module):
    """Lossless, parameter-free stand-in for the FLUX VAE: pixels in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.config = CodecConfig()
        # no weights; one frozen scalar so `next(codec.parameters())` tells callers the dtype/device
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def encode(self, pixels: torch.Tensor) -> EncodeOutput:
        """pixels: (b, 3, H, W) -> latent (b, 48, H/4, W/4)"""
        z = rearrange(pixels, "b c (h ph) (w pw) -> b (c ph pw) h w", ph=CODEC_FACTOR, pw=CODEC_FACTOR)
        return EncodeOutput(_Posterior(z))

    def decode(self, latent: torch.Tensor) -> DecodeOutput:
        """latent (b, 48, h, w) -> pixels (b, 3, 4h, 4w)"""
        x = rearrange(latent, "b (c ph pw) h w -> b c (h ph) (w pw)", ph=CODEC_FACTOR, pw=CODEC_FACTOR)
        return DecodeOutput(x)


def pack(images: torch.Tensor) -> torch.Tensor:
    """images (b, 3, H, W) in [0, 1] -> tokens (b, h*w, 192), as FLUX packs VAE latents."""
    z = PixelCodec().encode(images * 2 - 1).latent_dist.mode()                         # (b, 48, H/4, W/4)
    return rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)


def unpack(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """tokens (b, h*w, 192) on an (h, w) grid -> images (b, 3, 8h, 8w) in [0, 1] (clamped)."""
    z = rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=grid[0], w=grid[1], ph=PATCH, pw=PATCH)
    return (PixelCodec().decode(z).sample / 2 + 0.5).clamp(0, 1)


def image_ids(grid: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """FLUX img_ids (h*w, 3) = (0, row, col)."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()
