"""Shared test helpers: tiny random FLUX and adapters (no downloads)."""
from __future__ import annotations

import random

import torch

from refcomp_core import InstanceFeatures, RefCompAdapter, parse_layout
from refcomp_core.hosts.diffusers_flux import config_for

TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, guidance_embeds=True,
                 axes_dims_rope=(4, 6, 6))
TINY_ADAPTER = dict(clip_dim=12, dino_dim=10, text_dim=8, visual_dim=10, alpha_hidden=16, dense_k=2,
                    fourier_freqs=3, modulation_rank=4, bridge_rank=3, lora_rank=4)


def tiny_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**TINY_FLUX).eval()
    # diffusers zero-inits nothing we rely on; make every weight random so tests are meaningful
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def tiny_adapter(model, seed: int = 0, **overrides) -> RefCompAdapter:
    torch.manual_seed(seed)
    return RefCompAdapter(config_for(model, **{**TINY_ADAPTER, **overrides})).eval()


def randomize(adapter: RefCompAdapter, seed: int = 1, scale: float = 0.3) -> RefCompAdapter:
    """Non-zero everywhere (breaks every zero-init) for tests that need an active adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return adapter


def random_layout(n: int, seed: int = 0, width: int = 128, height: int = 128, num_refs: int = 3,
                  caption_only: float = 0.3, min_px: int = 16):
    rng = random.Random(seed)
    inst = []
    for i in range(n):
        bw, bh = rng.randint(min_px, width) / width, rng.randint(min_px, height) / height
        x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
        ref = None if rng.random() < caption_only else rng.randrange(num_refs)
        inst.append({"box": [x0, y0, min(1.0, x0 + bw), min(1.0, y0 + bh)], "ref": ref,
                     "caption": f"thing {i}" if rng.random() < 0.7 else None,
                     "depth": rng.choice(["fg", "mg", "bg", None]), "alpha": None})
    return parse_layout({"version": 1, "width": width, "height": height, "instances": inst}, num_refs=num_refs,
                        max_instances=max(50, n))


def features(adapter: RefCompAdapter, layout, num_refs: int = 3, seed: int = 0) -> InstanceFeatures:
    cfg = adapter.config
    g = torch.Generator().manual_seed(seed)
    return InstanceFeatures(clip_image=torch.randn(num_refs, cfg.clip_dim, generator=g),
                            dino=torch.randn(num_refs, cfg.dino_dim, generator=g),
                            caption=torch.randn(len(layout.instances), cfg.text_dim, generator=g))


def flux_inputs(model, batch: int = 2, h: int = 8, w: int = 8, txt_len: int = 5, seed: int = 0):
    """Inputs of a FluxTransformer2DModel forward for an h x w token grid."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    img_ids = torch.zeros(h * w, 3)
    img_ids[:, 1] = torch.arange(h).repeat_interleave(w).float()
    img_ids[:, 2] = torch.arange(w).repeat(h).float()
    return dict(hidden_states=torch.randn(batch, h * w, cfg.in_channels, generator=g),
                encoder_hidden_states=torch.randn(batch, txt_len, cfg.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
                timestep=torch.full((batch,), 0.7), guidance=torch.full((batch,), 3.5),
                img_ids=img_ids, txt_ids=torch.zeros(txt_len, 3), return_dict=False)
