"""One XVerse composition from the converted weights and per-reference inputs (WEIGHTS_COMPAT §2.3-§2.4),
computed once per sampling run: the adapter runs once per reference (it ignores the timestep), the offsets
are bound to the prompt tokens, and the references' latents and positions are packed.

Axis letters: N references, L prompt tokens (128), K offset blocks, T tokens per reference, C latent
channels, D width, M image tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..geometry import TokenGrid, box_token_indices
from ..pathways.xverse import XVerseScales, XVerseState
from ..rope import rope_from_ids
from ..session import XVerseRun
from .adapter import XVerseAdapter
from .presets import XVersePreset, reference_position_ids
from .resampler import offsets
from .spans import SpanBinding


@dataclass
class XVerseReference:
    """One reference as XVerse reads it.

    txt: (1, L, 4096) T5 last hidden states of its caption at exactly L tokens; img: (1, M, 1024) CLIP
    ViT-L/14 vision hidden_states[-2] of the white-padded square image (M = 257); latents: (T, C) its
    packed VAE latents at cond_size; is_id: a person (lambda = weight_id) or not (weight_ip)."""

    txt: torch.Tensor
    img: torch.Tensor
    latents: torch.Tensor
    is_id: bool = False


@dataclass
class SiteLoRAs:
    """The LoRA pairs of one block by site name (views of the adapter's own parameters, never copies,
    so they follow the adapter wherever ComfyUI moves it)."""

    deltas: dict


def adapter_loras(adapter: XVerseAdapter) -> dict[str, SiteLoRAs]:
    """The converted LoRA by block ("<double>", "s<single>", "x") and site, as the pathway reads it."""
    from ..released.lora_keys import site_of

    out: dict[str, SiteLoRAs] = {}
    for module in adapter.config.lora:
        where = site_of(module)
        if where is None:
            raise ValueError(f"XVerse LoRA: no RefComp site for module {module}")
        out.setdefault(where[0], SiteLoRAs({})).deltas[where[1]] = adapter.lora_pair(module)
    return out


def confine_mask(boxes: Sequence[tuple[float, float, float, float]], grid: TokenGrid) -> torch.Tensor:
    """RefComp's experimental confinement: (M, N) bool, True where image token m lies in reference n's box
    (normalized [x0, y0, x1, y1]; the token centres inside it, as every RefComp box mask)."""
    mask = torch.zeros(grid.n, len(boxes), dtype=torch.bool)
    for n, box in enumerate(boxes):
        mask[box_token_indices(tuple(box), grid), n] = True
    return mask


def build_run(adapter: XVerseAdapter, references: Sequence[XVerseReference], binding: SpanBinding,
              preset: XVersePreset, *, axes_dim: Sequence[int], theta: float, num_double_blocks: int,
              loras: dict | None = None, confine: torch.Tensor | None = None) -> XVerseRun:
    """The XVerseRun of these references bound to a prompt. The resamplers run where `adapter.net` is
    (the LoRA may live elsewhere); the session moves the state to each block's device. `loras` may be
    passed to reuse the sets across runs (they do not depend on the references). confine: (M, N) bool
    (`confine_mask`) or None (XVerse's own attention)."""
    n = len(references)
    if n != binding.text_cond_mask.shape[1]:
        raise ValueError(f"XVerse: {n} references but the prompt binding has {binding.text_cond_mask.shape[1]}")
    if confine is not None and (confine.ndim != 2 or confine.shape[1] != n):
        raise ValueError(f"XVerse: the confine mask must be (image tokens, {n}), got {tuple(confine.shape)}")
    bad = [i for i, r in enumerate(references) if r.latents.ndim != 2 or r.latents.shape[0] != preset.reference_tokens]
    if bad:
        raise ValueError(f"XVerse: reference {bad[0]} has latents {tuple(references[bad[0]].latents.shape)}, the "
                         f"preset's cond_size {preset.cond_size} needs ({preset.reference_tokens}, C) packed tokens")
    first = next(adapter.net.parameters())
    with torch.no_grad():
        shared, per_block = [], []
        for ref in references:
            s, p = offsets(adapter, ref.txt.to(first.device, first.dtype), ref.img.to(first.device, first.dtype))
            shared.append(s[0])
            per_block.append(p[0])
        delta, delta_block = binding.gather(torch.stack(shared).float(), torch.stack(per_block).float())
    if delta_block.shape[1] < num_double_blocks:
        raise ValueError(f"XVerse: the adapter has offsets for {delta_block.shape[1]} blocks, the model has "
                         f"{num_double_blocks} double blocks")
    latents = torch.cat([r.latents for r in references]).float() if n else None
    ids = torch.cat([reference_position_ids(i, preset.cond_size) for i in range(n)]) if n else torch.zeros(0, 3)
    state = XVerseState(delta_shared=delta, delta_block=delta_block[:, :num_double_blocks].transpose(0, 1).contiguous(),
                        bound=torch.nonzero(binding.delta_mask).flatten(), text_cond=binding.text_cond_mask,
                        ref_latents=latents, ref_rope=rope_from_ids(ids, tuple(axes_dim), theta) if n else None,
                        lam=torch.tensor([preset.reference_lambda(r.is_id) for r in references], dtype=torch.float32),
                        tokens_per_ref=preset.reference_tokens, confine=confine)
    scales = XVerseScales(global_scale=preset.lora_scale, latent_sblock=preset.latent_sblora_scale,
                          ref_sblock=preset.condition_sblora_scale)
    return XVerseRun(state=state, loras=loras if loras is not None else adapter_loras(adapter), scales=scales,
                     vae_skip=preset.vae_skip)
