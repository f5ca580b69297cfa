"""Running the frozen encoders once per reference set (duck-typed over ComfyUI objects).

- CLIP-L image embeds and DINOv2-L CLS come from ComfyUI CLIP_VISION objects
  (`encode_image(image) -> {"image_embeds": (1, dim), ...}`): for CLIP that is the
  projected image embed (768), for DINOv2 the layer-normed CLS token (1024).
- Caption embeds are the CLIP-L pooled text embedding from the FLUX CLIP
  (`tokenize` + `encode_from_tokens(..., return_pooled=True)`); the T5 half gets an
  empty prompt, since only the CLIP-L pooled vector is used.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from refcomp_core.layout import Layout
from refcomp_core.state import InstanceFeatures

from .types import ReferenceSet

log = logging.getLogger(__name__)

Progress = Callable[[], None]


def check_references(layout: Layout, references: ReferenceSet | None) -> int:
    """Number of references; raises when the layout points past the set."""
    count = len(references) if references is not None else 0
    used = layout.referenced
    if used and used[-1] >= count:
        raise ValueError(f"Instance Encode: the layout references image {used[-1]} but the reference set has {count} "
                         f"image(s); load every referenced image (indices start at 0) or fix the boxes' ref")
    unused = sorted(set(range(count)) - set(used))
    if unused:
        log.info("RefComp: references %s are not used by any box", unused)
    return count


def encode_images(encoder: Any, references: ReferenceSet, what: str, step: Progress | None = None) -> torch.Tensor:
    """-> (r, dim) image embeds, one encoder call per reference."""
    rows = []
    for image in references.images:
        out = encoder.encode_image(image[None])
        try:
            embeds = out["image_embeds"]
        except (KeyError, TypeError, AttributeError):
            embeds = None
        if embeds is None:
            raise ValueError(f"Instance Encode: the {what} encoder returned no image_embeds; load it with "
                             "'Load CLIP Vision'")
        rows.append(embeds.reshape(embeds.shape[0], -1)[0].float().cpu())
        if step:
            step()
    return torch.stack(rows)


def _tokens(clip: Any, text: str) -> Any:
    tokens = clip.tokenize(text)
    if isinstance(tokens, dict) and "l" in tokens and len(tokens) > 1:
        empty = clip.tokenize("")
        tokens = {k: (v if k == "l" else empty.get(k, v)) for k, v in tokens.items()}
    return tokens


def encode_captions(clip: Any, layout: Layout, step: Progress | None = None) -> torch.Tensor | None:
    """-> (n, text_dim) pooled CLIP-L text embeds per instance, of "" for a box without a caption
    (InstanceAssemble's layout net reads it; RefComp's own encoder masks those rows out); None when
    no clip is connected and no box has a caption."""
    captions = [inst.caption or "" for inst in layout.instances]
    if clip is None:
        if any(captions):
            raise ValueError("Instance Encode: boxes have captions but no clip is connected; connect the FLUX CLIP "
                             "(DualCLIPLoader with clip_l + t5xxl, type flux) or remove the captions")
        return None
    if not captions:
        return None
    cache: dict[str, torch.Tensor] = {}
    rows = []
    for caption in captions:
        if caption not in cache:
            out = clip.encode_from_tokens(_tokens(clip, caption), return_pooled=True)
            pooled = out[1] if isinstance(out, (tuple, list)) else None
            if pooled is None:
                raise ValueError("Instance Encode: the clip gave no pooled output; connect the FLUX CLIP (clip_l)")
            cache[caption] = pooled.reshape(pooled.shape[0], -1)[0].float().cpu()
        rows.append(cache[caption])
        if step:
            step()
    return torch.stack(rows)


def encode_instances(layout: Layout, references: ReferenceSet | None, clip_vision: Any, dino: Any, clip: Any,
                     progress: Callable[[int, int], None] | None = None) -> InstanceFeatures:
    """Run every encoder that is connected, once. Missing encoders an instance needs are
    reported by the core when the state is built (MissingEncoderError)."""
    count = check_references(layout, references)
    refs = references if count else None
    total = (count if clip_vision is not None else 0) + (count if dino is not None else 0) + len(layout.instances)
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress:
            progress(done[0], max(total, 1))

    clip_image = encode_images(clip_vision, refs, "CLIP-L", step) if (refs and clip_vision is not None) else None
    dino_feats = encode_images(dino, refs, "DINOv2", step) if (refs and dino is not None) else None
    caption = encode_captions(clip, layout, step)
    return InstanceFeatures(clip_image=clip_image, dino=dino_feats, caption=caption)


def check_widths(features: InstanceFeatures, config: Any) -> None:
    """Clear errors when encoder widths do not match the adapter's config."""
    ia = getattr(config, "instanceassemble", None)
    pairs = (("caption", "caption embeds", ia.text_dim if ia is not None else config.text_dim, "FLUX CLIP (clip_l)"),)
    if getattr(config, "identity", True):
        pairs = (("clip_image", "CLIP-L image embeds", config.clip_dim, "CLIP-L (clip_vision_l)"),
                 ("dino", "DINOv2 CLS", config.dino_dim, "DINOv2-L (dino2_large)")) + pairs
    for attr, what, want, fix in pairs:
        t = getattr(features, attr)
        if t is not None and t.shape[-1] != want:
            raise ValueError(f"RefComp: {what} have width {t.shape[-1]} but this checkpoint expects {want}; "
                             f"connect {fix} to Instance Encode")
