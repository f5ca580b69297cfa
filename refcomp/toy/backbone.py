"""The toy backbone: a real diffusers `FluxTransformer2DModel` with tiny dimensions,
and the rectified-flow pieces it is pretrained and sampled with.

Rectified flow as FLUX: x_t = (1 - sigma) x0 + sigma noise, the model predicts
v = noise - x0 with `timestep=sigma` (diffusers scales by 1000 inside). Training sigmas
are logit-normal with FLUX's time shift; sampling is Euler on the shifted schedule.

Axis letters: b batch, N image tokens, C token channels, L text tokens, D width.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .packing import PIXELS_PER_TOKEN, TOKEN_CHANNELS, image_ids

TEXT_LEN = 40                     # longest toy caption: 8 objects x 4 words + "and" + 6 background words


@dataclass(frozen=True)
class ToyBackboneConfig:
    """FluxTransformer2DModel arguments. Width = heads x head_dim; rope axes sum to head_dim."""

    in_channels: int = TOKEN_CHANNELS
    num_layers: int = 4
    num_single_layers: int = 4
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    joint_attention_dim: int = 64
    pooled_projection_dim: int = 64
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"ToyBackboneConfig.axes_dims_rope {self.axes_dims_rope} must sum to "
                             f"attention_head_dim ({self.attention_head_dim})")

    def to_dict(self) -> dict:
        return {**asdict(self), "axes_dims_rope": list(self.axes_dims_rope)}


def build_backbone(config: ToyBackboneConfig | None = None, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised tiny FLUX transformer (no guidance embedding: sampled with true CFG)."""
    from diffusers import FluxTransformer2DModel

    cfg = config or ToyBackboneConfig()
    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, guidance_embeds=False, **cfg.to_dict())


def velocity(model: torch.nn.Module, x_t: torch.Tensor, sigma: torch.Tensor, prompt: torch.Tensor,
             pooled: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """x_t (b, N, C), sigma (b,), prompt (b, L, Dt), pooled (b, Dp) -> v (b, N, C)"""
    dtype = next(model.parameters()).dtype
    return model(hidden_states=x_t.to(dtype), encoder_hidden_states=prompt.to(dtype),
                 pooled_projections=pooled.to(dtype), timestep=sigma.to(dtype),
                 img_ids=image_ids(grid, x_t.device), txt_ids=torch.zeros(prompt.shape[1], 3, device=x_t.device),
                 return_dict=False)[0]


def time_shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """FLUX's shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def train_sigmas(batch: int, generator: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """Logit-normal sigmas, shifted.  -> (b,) in (0, 1)"""
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    return time_shift(u, shift).clamp(1e-5, 1 - 1e-5)


def sample_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """Sigmas from 1 to 0 for Euler sampling.  -> (steps + 1,)"""
    return time_shift(torch.linspace(1.0, 0.0, steps + 1), shift)


def token_grid(height: int, width: int) -> tuple[int, int]:
    if height % PIXELS_PER_TOKEN or width % PIXELS_PER_TOKEN:
        raise ValueError(f"toy images must be multiples of {PIXELS_PER_TOKEN} px, got {width}x{height}")
    return height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN


DEFAULT_SHIFT = math.e ** 0.5     # FLUX's shift at its base sequence length (mu = 0.5)
