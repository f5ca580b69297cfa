"""Step 2 (continued): frozen-encoder features per sample, online or from the cache.

The optional cache holds one safetensors file per sample (`precompute`), keyed by a
hash of everything that determines its content, so an edited manifest never reuses
stale features. Axis letters: N image tokens, L text tokens, r refs, n instances.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass

import torch

from refcomp_core import InstanceFeatures, Layout

from . import encoders as enc
from .config import DataConfig
from .data import Sample, Skipped, load_rgb

FIELDS = ("latents", "prompt", "pooled", "clip_image", "dino", "caption")


@dataclass
class SampleFeatures:
    """latents (N, 4C), prompt (L, C_t5), pooled (C_clip,), clip_image (r, clip_dim),
    dino (r, dino_dim), caption (n, text_dim)."""

    latents: torch.Tensor
    prompt: torch.Tensor
    pooled: torch.Tensor
    clip_image: torch.Tensor
    dino: torch.Tensor
    caption: torch.Tensor

    def to(self, device: torch.device) -> "SampleFeatures":
        return SampleFeatures(**{k: getattr(self, k).to(device) for k in FIELDS})


@dataclass
class Batch:
    """What one training step consumes. latents (b, N, 4C) on `grid` (h, w) tokens,
    prompt (b, L, C_t5), pooled (b, C_clip); one layout and InstanceFeatures per row."""

    latents: torch.Tensor
    grid: tuple[int, int]
    prompt: torch.Tensor
    pooled: torch.Tensor
    layouts: list[Layout]
    features: list[InstanceFeatures]
    lines: list[int]


def cache_key(sample: Sample, cfg: DataConfig) -> str:
    stat = os.stat(sample.image)
    doc = {"image": sample.image, "mtime": stat.st_mtime_ns, "size": stat.st_size, "bucket": sample.bucket,
           "caption": sample.caption, "refs": sample.refs, "captions": [i.caption for i in sample.layout.instances],
           "max_text_len": cfg.max_text_len, "ref_background": cfg.ref_background}
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def compute_features(fz: enc.Frozen, sample: Sample, cfg: DataConfig) -> SampleFeatures:
    """Run the frozen encoders on one sample. Raises OSError/ValueError if a file is unreadable."""
    pixels = load_rgb(sample.image, size=sample.bucket)[None] * 2 - 1               # (1, 3, H, W)
    crops = [load_rgb(p, background=cfg.ref_background) for p in sample.refs]
    dev = fz.device
    prompt, pooled = enc.prompt_embeds(fz, [sample.caption], cfg.max_text_len)
    if crops:
        clip = torch.cat([enc.clip_image(fz, c[None].to(dev)) for c in crops])     # (r, clip_dim)
        dino = torch.cat([enc.dino_tokens(fz, c[None].to(dev))[0] for c in crops])  # (r, dino_dim)
    else:
        clip = torch.zeros(0, fz.clip_vision.config.projection_dim, device=dev)
        dino = torch.zeros(0, fz.dino.config.hidden_size, device=dev)
    caption = enc.caption_embeds(fz, [i.caption for i in sample.layout.instances])
    latents = enc.encode_latents(fz, pixels.to(dev))
    out = SampleFeatures(latents=latents[0], prompt=prompt[0], pooled=pooled[0], clip_image=clip, dino=dino,
                         caption=caption)
    return SampleFeatures(**{k: getattr(out, k).float().cpu() for k in FIELDS})


def cache_path(sample: Sample, cfg: DataConfig) -> str:
    return os.path.join(cfg.cache_dir, f"{cache_key(sample, cfg)}.safetensors")


def save_cached(path: str, feats: SampleFeatures) -> None:
    from safetensors.torch import save_file
    tmp = f"{path}.tmp"
    save_file({k: getattr(feats, k).contiguous() for k in FIELDS}, tmp)
    os.replace(tmp, path)


def load_cached(path: str) -> SampleFeatures:
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no cached features; run `refcomp train --config ... --precompute`")
    return SampleFeatures(**load_file(path))


def sample_features(fz: enc.Frozen, sample: Sample, cfg: DataConfig) -> SampleFeatures:
    return load_cached(cache_path(sample, cfg)) if cfg.cache_dir else compute_features(fz, sample, cfg)


def bucket_members(samples: list[Sample]) -> dict[tuple[int, int], list[int]]:
    """Sample indices per bucket, in manifest order."""
    members: dict[tuple[int, int], list[int]] = {}
    for j, s in enumerate(samples):
        members.setdefault(s.bucket, []).append(j)
    return members


def load_batch(fz: enc.Frozen, samples: list[Sample], ids: list[int], cfg: DataConfig, skipped: Skipped,
               members: dict[tuple[int, int], list[int]] | None = None) -> Batch:
    """Features of a batch; an unreadable sample is replaced by the next readable one of
    its bucket (deterministic, counted), so batch sizes never change.
    `members`: `bucket_members(samples)`, computed once by the caller."""
    members = members or bucket_members(samples)
    rows: list[tuple[Sample, SampleFeatures]] = []
    for i in ids:
        bucket = members[samples[i].bucket]
        start = bisect.bisect_left(bucket, i)
        for k in range(len(bucket)):
            s = samples[bucket[(start + k) % len(bucket)]]
            if s.line in skipped.lines:
                continue
            try:
                rows.append((s, sample_features(fz, s, cfg)))
                break
            except (OSError, ValueError, SyntaxError) as err:
                skipped.add(f"unreadable ({type(err).__name__}: {err})", f"manifest line {s.line}", s.line)
        else:
            raise ValueError(f"data: every sample of bucket {samples[i].bucket} is unreadable; check the manifest")
    dev = fz.device
    w, h = rows[0][0].bucket
    ppt = fz.pixels_per_token
    return Batch(latents=torch.stack([f.latents for _, f in rows]).to(dev), grid=(h // ppt, w // ppt),
                 prompt=torch.stack([f.prompt for _, f in rows]).to(dev),
                 pooled=torch.stack([f.pooled for _, f in rows]).to(dev),
                 layouts=[s.layout for s, _ in rows],
                 features=[InstanceFeatures(clip_image=f.clip_image.to(dev), dino=f.dino.to(dev),
                                            caption=f.caption.to(dev)) for _, f in rows],
                 lines=[s.line for s, _ in rows])
