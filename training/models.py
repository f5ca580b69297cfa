"""Step 3 of training: models.

Frozen parts come from local folders (diffusers/transformers `from_pretrained`,
offline); the adapter's dimensions are read from them, never hard-coded; a stage
after the first starts from the previous stage's exported RefComp file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import IDENTITY_FIELDS, add_identity, load_adapter, read_info
from refcomp_core.hosts.diffusers_flux import enable_gradient_checkpointing, config_for, flux_dims

from .config import ModelPaths, TrainConfig
from .encoders import Frozen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Needs:
    """Which frozen parts a run must load."""

    encoders: bool = True        # text/image encoders + VAE encoder (off when features are cached)
    decoder: bool = False        # VAE decoder + DINOv2 on x0 (identity / box losses, validation)


def load_frozen(paths: ModelPaths, needs: Needs, device: torch.device, dtype: torch.dtype) -> Frozen:
    """Load, freeze and move the frozen parts. Everything is local (`local_files_only`)."""
    if paths.provider == "toy":
        from refcomp.toy.parts import load_parts
        parts = load_parts(paths.toy_weights, device, dtype)
        return Frozen(**parts.frozen_kwargs(), pixels_per_token=parts.pixels_per_token)
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPVisionModelWithProjection, Dinov2Model, \
        T5EncoderModel

    def load(cls, name, **kw):
        model = cls.from_pretrained(paths.resolve(name), local_files_only=True, **kw)
        model.requires_grad_(False).eval()
        return model.to(device=device, dtype=dtype) if hasattr(model, "parameters") else model

    fz = Frozen(transformer=load(FluxTransformer2DModel, "transformer"))
    if needs.encoders or needs.decoder:
        fz.vae = load(AutoencoderKL, "vae")
        fz.dino = load(Dinov2Model, "dino")
    if needs.encoders:
        fz.clip_text = load(CLIPTextModel, "text_encoder")
        fz.clip_tokenizer = AutoTokenizer.from_pretrained(paths.resolve("tokenizer"), local_files_only=True)
        fz.t5 = load(T5EncoderModel, "text_encoder_2")
        fz.t5_tokenizer = AutoTokenizer.from_pretrained(paths.resolve("tokenizer_2"), local_files_only=True)
        fz.clip_vision = load(CLIPVisionModelWithProjection, "clip_vision")
    return fz


def encoder_dims(paths: ModelPaths) -> dict[str, int]:
    """clip_dim / dino_dim / text_dim / visual_dim read from the encoders' configs."""
    if paths.provider == "toy":
        from refcomp.toy.parts import encoder_dims_of
        return encoder_dims_of(paths.toy_weights)
    from transformers import AutoConfig

    clip_v = AutoConfig.from_pretrained(paths.resolve("clip_vision"), local_files_only=True)
    dino = AutoConfig.from_pretrained(paths.resolve("dino"), local_files_only=True)
    clip_t = AutoConfig.from_pretrained(paths.resolve("text_encoder"), local_files_only=True)
    clip_dim = getattr(clip_v, "projection_dim", None) or clip_v.vision_config.projection_dim
    text_dim = getattr(clip_t, "hidden_size", None) or clip_t.text_config.hidden_size
    return dict(clip_dim=int(clip_dim), dino_dim=int(dino.hidden_size), text_dim=int(text_dim),
                visual_dim=int(dino.hidden_size))


def build_adapter(cfg: TrainConfig, transformer: torch.nn.Module) -> RefCompAdapter:
    """A fresh adapter (stage 1), the previous stage's file (`init_from`), or converted released weights
    (`init_from` a `refcomp convert` file) with the identity pathway added on top; trainable
    namespaces set for this stage."""
    if cfg.init_from:
        d = flux_dims(transformer)
        dims = dict(hidden_size=d.hidden_size, num_double_blocks=d.num_double_blocks,
                    num_single_blocks=d.num_single_blocks)
        if not read_info(cfg.init_from).config.identity:          # released weights (refcomp convert)
            sizes = {k: v for k, v in {**encoder_dims(cfg.models), **cfg.adapter}.items() if k in IDENTITY_FIELDS}
            torch.manual_seed(cfg.seed)
            adapter, info = add_identity(cfg.init_from, **dims, **sizes)
            log.info("init_from %s (%s) has no identity pathway: added it freshly initialised on top; the "
                     "composed output equals the file's until it trains", cfg.init_from,
                     (info.source or {}).get("method", "converted weights"))
        else:
            adapter, info = load_adapter(cfg.init_from, **dims)
            if cfg.adapter:
                log.warning("adapter: overrides are ignored when init_from is set (the file carries its config)")
        if info.stage is not None and info.stage >= cfg.stage:
            log.warning("init_from %s was exported by stage %s; this run is stage %s", cfg.init_from, info.stage,
                        cfg.stage)
    else:
        torch.manual_seed(cfg.seed)
        adapter = RefCompAdapter(config_for(transformer, **{**encoder_dims(cfg.models), **cfg.adapter}))
    adapter.set_trainable(cfg.trainable)
    adapter.train()
    counts = adapter.parameter_counts()
    log.info("stage %d trains %s (%d parameters)", cfg.stage, [n for n in cfg.trainable if counts[n]],
             sum(counts[n] for n in cfg.trainable))
    return adapter
