"""XVerse's T-Mod adapter: two text-image resamplers (WEIGHTS_COMPAT §2.2a, §2.3).

State-dict keys are exactly the released ones (below `net.` / `net2.` of the adapter):
`text_proj_in`, `image_proj_in`, `perceiver_blocks.{l}.attn` (an nn.MultiheadAttention with packed
[q; k; v] `in_proj_weight`), `perceiver_blocks.{l}.mlp.c_fc` / `.c_proj`, `perceiver_blocks.{l}.ln_1`
/ `ln_2` / `ln_ff` `.linear`, `proj_out.0` (Linear) and `proj_out.1` (affine LayerNorm).

Axis letters: B batch (one reference each), L caption tokens (128), M image tokens (257: CLS + 16 x 16
patches), W resampler width, T timestep-embedding width (64), O output width, K offset blocks, D out_dim.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

if TYPE_CHECKING:
    from .adapter import XVerseAdapter

ADA_NORM_EPS = 1e-6          # the AdaLayerNorm's affine-free LayerNorm; proj_out's LayerNorm keeps torch's 1e-5


class AdaLayerNorm(nn.Module):
    """Affine-free LayerNorm modulated by `linear(silu(t))` = (shift, scale), in that order.

    The adapter always passes a zero timestep embedding, so (silu(0) = 0) the modulation is the
    linear's bias alone; its weight never acts.
    """

    def __init__(self, width: int, time_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(time_dim, 2 * width)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x: (B, S, W); t_emb: (B, 1, T) -> (B, S, W)."""
        shift, scale = self.linear(F.silu(t_emb)).chunk(2, dim=-1)           # (B, 1, W) each
        return F.layer_norm(x, x.shape[-1:], eps=ADA_NORM_EPS) * (1 + scale) + shift


class SquaredReLUMLP(nn.Module):
    """c_proj(relu(c_fc(x))^2), hidden 4W."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.relu(self.c_fc(x)).square())


class PerceiverBlock(nn.Module):
    """Text latents attend to themselves and the image tokens (`double_kv`), then a squared-ReLU MLP."""

    def __init__(self, width: int, heads: int, time_dim: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = SquaredReLUMLP(width)
        self.ln_1 = AdaLayerNorm(width, time_dim)       # on the text latents
        self.ln_2 = AdaLayerNorm(width, time_dim)       # on the image tokens
        self.ln_ff = AdaLayerNorm(width, time_dim)      # before the MLP

    def forward(self, latents: torch.Tensor, image: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """latents: (B, L, W) text; image: (B, M, W); t_emb: (B, 1, T) -> (B, L, W)."""
        q = self.ln_1(latents, t_emb)
        kv = torch.cat([q, self.ln_2(image, t_emb)], dim=1)                 # (B, L + M, W), no mask
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.mlp(self.ln_ff(latents, t_emb))


class TextImageResampler(nn.Module):
    """(caption T5 states, CLIP image states) -> one O-vector per caption token."""

    def __init__(self, *, width: int, layers: int, heads: int, text_dim: int, image_dim: int, time_dim: int,
                 out_dim: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.text_proj_in = nn.Linear(text_dim, width)
        self.image_proj_in = nn.Linear(image_dim, width)
        self.perceiver_blocks = nn.ModuleList(PerceiverBlock(width, heads, time_dim) for _ in range(layers))
        self.proj_out = nn.Sequential(nn.Linear(width, out_dim), nn.LayerNorm(out_dim))

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """text: (B, L, C_text); image: (B, M, C_image) -> (B, L, O)."""
        t_emb = text.new_zeros(text.shape[0], 1, self.time_dim)             # the adapter ignores the timestep
        latents = self.text_proj_in(text)                                     # (B, L, W)
        image = self.image_proj_in(image)                                     # (B, M, W)
        for block in self.perceiver_blocks:
            latents = block(latents, image, t_emb)
        return self.proj_out(latents)                                         # (B, L, O)


def offsets(adapter: "XVerseAdapter", txt: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The text-stream offsets of one reference per batch row (§2.3). Timestep-independent: compute once.

    txt: (B, L, input_text_dim) T5 last hidden states of the caption (L = 128, padded, no mask);
    img: (B, M, input_image_dim) CLIP ViT-L/14 vision `hidden_states[-2]` (M = 257, CLS included).
    Returns shared (B, L, D) for every double block, and per_block (B, L, K, D): block b adds
    [:, :, b]; K = num_double_blocks + pblock_single_blocks, D = out_dim.
    """
    cfg = adapter.config
    if txt.ndim != 3 or txt.shape[-1] != cfg.input_text_dim:
        raise ValueError(f"XVerse offsets: txt must be (B, L, {cfg.input_text_dim}) T5 states, got {tuple(txt.shape)}")
    if img.ndim != 3 or img.shape[-1] != cfg.input_image_dim or img.shape[0] != txt.shape[0]:
        raise ValueError(f"XVerse offsets: img must be ({txt.shape[0]}, M, {cfg.input_image_dim}) CLIP penultimate "
                         f"states, got {tuple(img.shape)}")
    shared = adapter.net(txt, img)                                            # (B, L, D)
    per_block = rearrange(adapter.net2(txt, img), "b l (k d) -> b l k d", k=cfg.offset_blocks)
    return shared, per_block
