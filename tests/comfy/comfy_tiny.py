"""The tiny FLUX twin on the diffusers side (matches driver_nodes.TINY_UNET) and shared data."""
from __future__ import annotations

import torch
from einops import rearrange

# diffusers packs 2x2 latent patches itself: in_channels = 16 * 2 * 2, patch_size 1
TINY_DIFFUSERS = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                      num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, guidance_embeds=True,
                      axes_dims_rope=(4, 6, 6))


def tiny_diffusers_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**TINY_DIFFUSERS).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def pack(x: torch.Tensor) -> torch.Tensor:
    """(b, 16, H, W) latent -> (b, H/2 * W/2, 64) diffusers tokens."""
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return rearrange(t, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


def img_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h * w, 3)
    ids[:, 1] = torch.arange(h).repeat_interleave(w).float()
    ids[:, 2] = torch.arange(w).repeat(h).float()
    return ids


def diffusers_denoised(model, x, sigma, context, pooled, guidance, session=None) -> torch.Tensor:
    """Flow-matching denoised x0 = x - sigma * v from the diffusers transformer (with the RefComp
    diffusers host when `session` is given)."""
    from refcomp_core.hosts.diffusers_flux import patch_flux
    b, _, h, w = x.shape
    kwargs = dict(hidden_states=pack(x), encoder_hidden_states=context, pooled_projections=pooled,
                  timestep=sigma, guidance=guidance, img_ids=img_ids(h // 2, w // 2),
                  txt_ids=torch.zeros(context.shape[1], 3), return_dict=False)
    with torch.no_grad():
        if session is None:
            v = model(**kwargs)[0]
        else:
            with patch_flux(model, session):
                v = model(**kwargs)[0]
    return x - sigma[:, None, None, None] * unpack(v, h, w)
