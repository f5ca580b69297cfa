"""Sampling toy images with the frozen backbone, with or without RefComp.

RefComp runs through the real diffusers host (`patch_flux`) with a `RefCompSession`:
conditioned rows carry a composition state, the CFG rows (empty caption) run vanilla,
as `apply_to_uncond=False` prescribes. Euler on the shifted schedule; the session's
progress is the step fraction, so the layout window behaves as in ComfyUI.

Axis letters: b batch, N tokens, C channels, H W pixels.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from refcomp_core import Controls, RefCompAdapter, RefCompSession, build_state, parse_layout
from refcomp_core.hosts.diffusers_flux import patch_flux

from .backbone import DEFAULT_SHIFT, sample_schedule, token_grid, velocity
from .data import instance_features, prompts
from .packing import unpack
from .parts import ToyParts


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 20
    cfg_scale: float = 3.0
    shift: float = DEFAULT_SHIFT
    size: int = 64

    def __post_init__(self) -> None:
        if self.steps < 1 or self.cfg_scale < 0:
            raise ValueError(f"SampleConfig: steps must be >= 1 and cfg_scale >= 0, got {self.steps}, "
                             f"{self.cfg_scale}")


@torch.no_grad()
def generate(parts: ToyParts, captions: list[str], *, seeds: list[int], config: SampleConfig = SampleConfig(),
             adapter: RefCompAdapter | None = None, layouts: list[dict] | None = None,
             references: list[list] | None = None, controls: Controls | None = None) -> torch.Tensor:
    """captions: b global captions; with `adapter`, also b toy layouts and their reference
    images -> images (b, 3, H, W) in [0, 1]. Noise row i comes from seeds[i]."""
    model = parts.transformer
    device = next(model.parameters()).device
    grid = token_grid(config.size, config.size)
    b = len(captions)
    noise = torch.stack([torch.randn(grid[0] * grid[1], model.config.in_channels,
                                     generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    prompt, pooled = prompts(parts, captions)
    guided = config.cfg_scale != 1.0
    if guided:
        p0, q0 = prompts(parts, [""] * b)
        prompt, pooled = torch.cat([prompt, p0]), torch.cat([pooled, q0])
    session = None
    if adapter is not None:
        if layouts is None or references is None or len(layouts) != b or len(references) != b:
            raise ValueError("generate: with an adapter, give one layout and one reference list per caption")
        states = [build_state(adapter, parse_layout(lay, num_refs=len(refs)), instance_features(parts, lay, refs))
                  for lay, refs in zip(layouts, references)]
        session = RefCompSession(adapter, states=states + [None] * b if guided else states,
                                 controls=controls or Controls())
    x = noise
    sigmas = sample_schedule(config.steps, config.shift)
    with patch_flux(model, session) if session is not None else contextlib.nullcontext():
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            if session is not None:
                session.progress = i / config.steps
            xin = torch.cat([x, x]) if guided else x
            v = velocity(model, xin, torch.full((xin.shape[0],), float(s), device=device), prompt, pooled, grid)
            if guided:
                cond, uncond = v.chunk(2)
                v = uncond + config.cfg_scale * (cond - uncond)
            x = x + (float(s_next) - float(s)) * v.float()
    return unpack(x, grid)
