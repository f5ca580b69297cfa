"""The frozen parts and what they compute (used by the models, data and loss steps).

Axis letters: b batch, r references, n instances, L text tokens, N image tokens,
P DINO patches, C channels, H/W pixels, h/w latent or token grid.

Image pre-processing is written in torch (resize + normalize) so the identity and
box losses can back-propagate through DINOv2 into the decoded image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)           # DINOv2
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Frozen:
    """Frozen models; any may be None when the run does not need it (e.g. cached features)."""

    transformer: Any
    vae: Any = None
    clip_text: Any = None
    clip_tokenizer: Any = None
    t5: Any = None
    t5_tokenizer: Any = None
    clip_vision: Any = None
    dino: Any = None
    pixels_per_token: int = 16      # FLUX: 8x VAE x 2x2 packing; the toy codec gives 8

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype


def _normalize(images: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """images: (b, 3, H, W) in [0, 1] -> (b, 3, size, size) normalized."""
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    s = torch.tensor(std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - m) / s


def prompt_embeds(fz: Frozen, captions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global captions -> T5 tokens (b, L, C_t5) and the CLIP-L pooled vector (b, C_clip)."""
    dev = fz.device
    t5_ids = fz.t5_tokenizer(captions, padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids.to(dev)
    seq = fz.t5(t5_ids).last_hidden_state                                         # (b, L, C_t5)
    return seq, text_pooled(fz, captions)


def text_pooled(fz: Frozen, texts: list[str]) -> torch.Tensor:
    """CLIP-L text pooled embeddings.  -> (len(texts), C_clip)"""
    max_len = min(77, getattr(fz.clip_text.config, "max_position_embeddings", 77))
    ids = fz.clip_tokenizer(texts, padding="max_length", max_length=max_len, truncation=True,
                            return_tensors="pt").input_ids.to(fz.device)
    return fz.clip_text(ids).pooler_output


def caption_embeds(fz: Frozen, captions: list[str | None]) -> torch.Tensor:
    """Instance captions -> (n, C_clip), the embedding of "" where an instance has no caption
    (InstanceAssemble's layout net reads it; RefComp's own encoder masks those rows out)."""
    if not captions:
        return torch.zeros(0, fz.clip_text.config.hidden_size, device=fz.device)
    return text_pooled(fz, [c or "" for c in captions]).float()


def clip_image(fz: Frozen, images: torch.Tensor) -> torch.Tensor:
    """images: (r, 3, H, W) in [0, 1] -> CLIP-L image embeds (r, clip_dim)."""
    size = fz.clip_vision.config.image_size
    x = _normalize(images, size, CLIP_MEAN, CLIP_STD).to(_dtype(fz.clip_vision))
    return fz.clip_vision(pixel_values=x).image_embeds


def dino_tokens(fz: Frozen, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """images: (b, 3, H, W) in [0, 1] -> CLS (b, C), patches (b, P, C), patch grid (gh, gw).

    Differentiable w.r.t. `images` (the DINOv2 weights are frozen)."""
    size = fz.dino.config.image_size
    x = _normalize(images, size, IMAGENET_MEAN, IMAGENET_STD).to(_dtype(fz.dino))
    out = fz.dino(pixel_values=x)
    g = size // fz.dino.config.patch_size
    return out.pooler_output, out.last_hidden_state[:, 1:1 + g * g], (g, g)


def encode_latents(fz: Frozen, pixels: torch.Tensor) -> torch.Tensor:
    """pixels: (b, 3, H, W) in [-1, 1] -> packed FLUX latent tokens (b, N, 4C).

    Uses the mode of the VAE posterior so cached and online features agree exactly."""
    cfg = fz.vae.config
    lat = fz.vae.encode(pixels.to(_dtype(fz.vae))).latent_dist.mode()              # (b, C, h, w)
    lat = (lat - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
    return rearrange(lat, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def decode_tokens(fz: Frozen, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """tokens: (b, N, 4C) on an (h, w) token grid -> pixels (b, 3, p*h, p*w) in [0, 1]
    (p = fz.pixels_per_token)."""
    cfg = fz.vae.config
    lat = rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=grid[0], w=grid[1], ph=2, pw=2)
    lat = lat / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    img = fz.vae.decode(lat.to(_dtype(fz.vae))).sample
    return (img.float() / 2 + 0.5).clamp(0, 1)


def flux_ids(grid: tuple[int, int], text_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """img_ids (N, 3) = (0, row, col) and txt_ids (L, 3) = 0, as diffusers FLUX expects."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()
    return img_ids, torch.zeros(text_len, 3, device=device)


def _dtype(module: Any) -> torch.dtype:
    return next(module.parameters()).dtype
