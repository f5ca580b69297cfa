"""Seeded validation images with the layout drawn on, logged to tensorboard.

The first manifest samples are re-generated from the same seed at every validation
(Euler on FLUX's shifted flow schedule), so images are comparable across steps.
Axis letters: b batch, N image tokens, C latent channels.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from refcomp_core import build_state

from .encoders import decode_tokens
from .features import load_batch
from .losses import flux_shift_mu

VALIDATION_SAMPLES = 2
BOX_COLOURS = {"fg": (255, 64, 64), "mg": (255, 200, 0), "bg": (64, 128, 255), None: (255, 255, 255)}


def sigma_schedule(steps: int, seq_len: int, run_cfg) -> torch.Tensor:
    """Shifted sigmas from 1 to 0.  -> (steps + 1,)"""
    t = torch.linspace(1.0, 0.0, steps + 1)
    mu = math.exp(flux_shift_mu(seq_len, run_cfg.loss))
    return torch.where(t > 0, mu / (mu + (1 / t.clamp(min=1e-9) - 1)), t)


def draw_layout(image: torch.Tensor, layout) -> np.ndarray:
    """image: (3, H, W) in [0, 1] -> (H, W, 3) uint8 with each box outlined by depth."""
    from PIL import Image, ImageDraw

    arr = (image.permute(1, 2, 0).float().cpu().numpy() * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    w, h = im.size
    for inst in layout.instances:
        x0, y0, x1, y1 = inst.box
        draw.rectangle([x0 * w, y0 * h, x1 * w - 1, y1 * h - 1], outline=BOX_COLOURS.get(inst.depth), width=1)
    return np.asarray(im)


@torch.no_grad()
def validate(run, step: int) -> None:
    """Generate, draw, log. Main process only; uses the unwrapped adapter."""
    acc, cfg = run.accelerator, run.cfg
    model = acc.unwrap_model(run.model)
    ids = list(range(min(VALIDATION_SAMPLES, len(run.samples))))
    images = []
    for i in ids:
        batch = load_batch(run.frozen, run.samples, [i], cfg.data, run.skipped)
        states = [build_state(model.adapter, batch.layouts[0], batch.features[0])]
        g = torch.Generator().manual_seed(cfg.seed + i)
        x = torch.randn(batch.latents.shape, generator=g).to(batch.latents.device)
        sigmas = sigma_schedule(cfg.validation_steps, x.shape[1], cfg)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            sigma = torch.full((1,), float(s), device=x.device)
            v = model.flux(run.frozen, batch, x, sigma, states).float()
            x = x + (float(s_next) - float(s)) * v
        images.append(draw_layout(decode_tokens(run.frozen, x, batch.grid)[0], batch.layouts[0]))
    if acc.trackers:
        writer = acc.get_tracker("tensorboard", unwrap=True)
        for i, img in zip(ids, images):
            writer.add_image(f"validation/{i}", img, step, dataformats="HWC")
