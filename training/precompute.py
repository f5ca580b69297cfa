"""Optional data step: cache the frozen-encoder outputs of every sample to disk.

One safetensors file per sample under `data.cache_dir` (T5/CLIP text, CLIP/DINO
image features of the refs, VAE latents), so training steps never run the
encoders. Files already present are kept (resumable); unreadable samples are
skipped and counted.
"""
from __future__ import annotations

import logging
import os

import torch

from .config import TrainConfig
from .data import Sample, Skipped
from .features import cache_path, compute_features, save_cached
from .models import Needs, load_frozen

log = logging.getLogger(__name__)


def precompute(cfg: TrainConfig, samples: list[Sample], skipped: Skipped, device: torch.device) -> int:
    """Write missing cache files; returns how many were written."""
    from tqdm.auto import tqdm

    os.makedirs(cfg.data.cache_dir, exist_ok=True)
    todo = [s for s in samples if not os.path.isfile(cache_path(s, cfg.data))]
    if not todo:
        return 0
    frozen = load_frozen(cfg.models, Needs(encoders=True), device, torch.float32)
    written = 0
    for sample in tqdm(todo, desc="precompute"):
        try:
            feats = compute_features(frozen, sample, cfg.data)
        except (OSError, ValueError, SyntaxError) as err:
            skipped.add(f"unreadable ({type(err).__name__}: {err})", f"manifest line {sample.line}", sample.line)
            continue
        save_cached(cache_path(sample, cfg.data), feats)
        written += 1
    log.info("precompute: %d feature files written to %s", written, cfg.data.cache_dir)
    del frozen
    return written
