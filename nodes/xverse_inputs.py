"""XVerse's inputs from ComfyUI objects (WEIGHTS_COMPAT §2.4), duck-typed so the pure parts test without ComfyUI.

- The prompt and every reference caption go through T5 at exactly 128 tokens (ComfyUI pads T5 to 256:
  the token list is cut to 128, a longer text keeps 127 tokens + EOS as HF's truncation does).
- A reference image is white-padded to a square; CLIP ViT-L/14 vision reads it at 224 px
  (`penultimate_hidden_states`), the VAE at cond_size (256 px), and its latent is shifted and scaled
  by the model's latent format and packed into (cond_size / 16)^2 tokens of 64 channels.
- Identity boxes: a box with a reference whose alpha is >= 0.5, alpha being the box's manual alpha or
  1 for a box labelled fg (0 otherwise); neither release has an alpha predictor.

Axis letters: b batch, L tokens, H/W pixels, c channels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from refcomp_core.errors import RefCompError
from refcomp_core.layout import Layout
from refcomp_core.xverse.compose import XVerseReference
from refcomp_core.xverse.identity import MAX_IDENTITY_REFS, label_alpha
from refcomp_core.xverse.identity import identity_boxes as core_identity_boxes
from refcomp_core.xverse.presets import XVersePreset
from refcomp_core.xverse.spans import T5_LENGTH, SpanBinding, bind_spans, target_word

log = logging.getLogger(__name__)

T5_EOS, T5_PAD = 1, 0


@dataclass
class XVerseInputs:
    """What XVerse Encode prepared, for Apply: the references, their binding to the prompt, the preset,
    which layout boxes they are (indices, normalized boxes, the canvas size in px), and whether to confine
    each reference to its box (experimental)."""

    references: list[XVerseReference]
    binding: SpanBinding
    preset: XVersePreset
    boxes: list[int]
    confine: bool = False
    words: list[str] = field(default_factory=list)
    box_coords: list[tuple[float, float, float, float]] = field(default_factory=list)
    canvas: tuple[int, int] = (1024, 1024)

    def confine_mask(self) -> torch.Tensor | None:
        """(image tokens of the canvas, references) or None when not confined."""
        from refcomp_core.geometry import TokenGrid
        from refcomp_core.xverse.compose import confine_mask
        return confine_mask(self.box_coords, TokenGrid.from_pixels(self.canvas[1], self.canvas[0])) \
            if self.confine else None


def parse_id_refs(text: str, count: int) -> set[int]:
    """'0, 2' -> {0, 2}: the references that are people (XVerse's weight_id)."""
    out = set()
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) >= max(count, 1):
            raise RefCompError(f"XVerse Encode: id_refs: {part!r} is not a reference index in 0..{max(count - 1, 0)}; "
                               "write indices such as '0, 2'")
        out.add(int(part))
    return out


def identity_boxes(layout: Layout) -> list[int]:
    """Boxes with a reference and alpha >= 0.5, alpha by the label rule (refcomp_core.xverse.identity)."""
    return core_identity_boxes(layout, label_alpha(layout))


def t5_tokens(clip: Any, text: str, length: int = T5_LENGTH) -> dict:
    """ComfyUI FLUX tokens of `text` with the T5 part at exactly `length` tokens; the CLIP-L part as ComfyUI
    makes it."""
    tokens = clip.tokenize(text)
    if not isinstance(tokens, dict) or "t5xxl" not in tokens:
        raise RefCompError("XVerse Encode: the clip is not FLUX's (clip_l + t5xxl); load it with DualCLIPLoader "
                           "type flux")
    batches = tokens["t5xxl"]
    first = list(batches[0])
    ids = [t[0] for t in first]
    real = ids.index(T5_EOS) + 1 if T5_EOS in ids else len(ids)
    if real > length:
        first = first[:length - 1] + [(T5_EOS, *first[0][1:])]
    else:
        pad = (T5_PAD, *first[-1][1:]) if first else (T5_PAD, 1.0)
        first = (first + [pad] * length)[:length]
    return {**tokens, "t5xxl": [first]}


def t5_ids(clip: Any, text: str, length: int = T5_LENGTH) -> tuple[list[int], list[int]]:
    """(ids, attention mask) of `text` at exactly `length` T5 tokens, as `bind_spans` reads them."""
    ids = [int(t[0]) for t in t5_tokens(clip, text, length)["t5xxl"][0]]
    end = ids.index(T5_EOS) + 1 if T5_EOS in ids else len(ids)
    return ids, [1] * end + [0] * (len(ids) - end)


def encode_t5(clip: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 last hidden states (1, 128, 4096) and the CLIP-L pooled vector (1, 768) of `text`."""
    out = clip.encode_from_tokens(t5_tokens(clip, text), return_pooled=True)
    cond, pooled = out if isinstance(out, (tuple, list)) else (out, None)
    return cond, pooled


def square_on_white(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> centred on a white square (S, S, 3), S = max(H, W)."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = torch.ones(side, side, 3, dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = image[..., :3]
    return out


def resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """(S, S, 3) -> (size, size, 3), bicubic (PIL's default resize in the original), clamped to [0, 1]."""
    x = rearrange(image, "h w c -> 1 c h w").float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return rearrange(x.clamp(0, 1), "1 c h w -> h w c")


def clip_penultimate(clip_vision: Any, image: torch.Tensor) -> torch.Tensor:
    """CLIP ViT-L/14 vision hidden_states[-2] (1, 257, 1024) of a square image."""
    out = clip_vision.encode_image(resized(image, 224)[None])
    try:
        states = out["penultimate_hidden_states"]
    except (KeyError, TypeError):
        states = None
    if states is None:
        raise RefCompError("XVerse Encode: the clip_vision gave no penultimate hidden states; load CLIP ViT-L/14 "
                           "(clip_vision_l.safetensors) with Load CLIP Vision")
    return states.float().cpu()


def vae_tokens(vae: Any, image: torch.Tensor, cond_size: int, process_in: Callable[[torch.Tensor], torch.Tensor]
               ) -> torch.Tensor:
    """The reference's packed latent tokens ((cond_size / 16)^2, 64): VAE-encoded at cond_size, shifted and
    scaled by the model's latent format, 2x2 patches packed as FLUX packs them."""
    latent = vae.encode(resized(image, cond_size)[None])                      # (1, 16, S/8, S/8)
    latent = process_in(latent.float())
    return rearrange(latent[0], "c (h ph) (w pw) -> (h w) (c ph pw)", ph=2, pw=2).cpu()


def prepare(layout: Layout, images: Sequence[torch.Tensor], prompt: str, *, clip: Any, clip_vision: Any, vae: Any,
            preset: XVersePreset, id_refs: set[int], process_in: Callable[[torch.Tensor], torch.Tensor],
            confine: bool = False, progress: Callable[[int, int], None] | None = None) -> XVerseInputs:
    """Everything XVerse needs from the identity boxes of `layout`. Raises RefCompError naming the box and
    the fix (no caption, a word not in the prompt, too many references, missing encoders)."""
    boxes = identity_boxes(layout)
    if len(boxes) > MAX_IDENTITY_REFS:
        raise RefCompError(f"XVerse Encode: {len(boxes)} identity boxes (a reference and fg / alpha >= 0.5); at most "
                           f"{MAX_IDENTITY_REFS}: each adds {preset.reference_tokens} tokens to every block; mark the "
                           "others mg/bg or give them alpha < 0.5")
    for name, obj in (("clip", clip), ("clip_vision", clip_vision), ("vae", vae)):
        if obj is None and boxes:
            raise RefCompError(f"XVerse Encode: {len(boxes)} identity box(es) need the {name} input; connect it")
    captions = []
    for i in boxes:
        caption = layout.instances[i].caption
        if not caption:
            raise RefCompError(f"XVerse Encode: box {i} is an identity reference (ref {layout.instances[i].ref}) but "
                               "has no caption; give it a caption such as 'a cat' whose word ('cat') is in the prompt")
        captions.append(caption)
    binding = bind_spans(prompt, captions, lambda text: t5_ids(clip, text))
    refs = []
    for n, (i, caption) in enumerate(zip(boxes, captions)):
        image = square_on_white(images[layout.instances[i].ref])
        txt, _ = encode_t5(clip, caption)
        refs.append(XVerseReference(txt=txt.float().cpu(), img=clip_penultimate(clip_vision, image),
                                    latents=vae_tokens(vae, image, preset.cond_size, process_in),
                                    is_id=layout.instances[i].ref in id_refs))
        if progress:
            progress(n + 1, len(boxes))
    if boxes:
        log.info("XVerse: %d identity reference(s) %s; each adds %d tokens to every block", len(boxes),
                 [target_word(c) for c in captions], preset.reference_tokens)
    return XVerseInputs(references=refs, binding=binding, preset=preset, boxes=boxes, confine=confine,
                        words=[target_word(c) for c in captions],
                        box_coords=[layout.instances[i].box for i in boxes], canvas=(layout.width, layout.height))
