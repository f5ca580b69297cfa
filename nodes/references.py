"""Building the reference set: from an IMAGE batch (+ optional MASK for cut-outs) and/or
a subfolder of ComfyUI's input folder. Pure torch/PIL; no ComfyUI import.

Images are (H, W, 3) float in [0, 1]; RGBA is composited on white; folder files are
read in a stable sorted order.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import torch

from refcomp_core.errors import ReferenceImageError
from refcomp_core.limits import check_image_size, unreadable_image

from .types import ReferenceSet

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MASK_OBJECT = "mask marks the object"
MASK_BACKGROUND = "mask marks the background (Load Image alpha)"
MASK_MEANINGS = (MASK_BACKGROUND, MASK_OBJECT)


def resolve_subfolder(input_dir: str, subfolder: str) -> str:
    """The folder `subfolder` of `input_dir`, confined to it (no '..' or absolute escapes)."""
    sub = (subfolder or "").strip()
    if not sub:
        raise ValueError("Load Reference Set: folder is empty; give a subfolder of ComfyUI's input folder")
    base = os.path.realpath(input_dir)
    path = os.path.realpath(os.path.join(base, sub))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"Load Reference Set: folder {subfolder!r} is outside ComfyUI's input folder; give a path "
                         "relative to the input folder (no '..', no absolute path)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Load Reference Set: folder {subfolder!r} does not exist in ComfyUI's input folder "
                                f"({base}); create it and put the reference images there")
    return path


def list_images(folder: str) -> list[str]:
    """Image file names (png/jpg/webp) of a folder, sorted case-insensitively then exactly."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
             and os.path.isfile(os.path.join(folder, n))]
    return sorted(names, key=lambda n: (n.lower(), n))


def load_image(path: str) -> torch.Tensor:
    """One file -> (H, W, 3) float in [0, 1]; transparency composited on white.

    The size is checked from the header before decoding; an unreadable, damaged or
    too large file raises ReferenceImageError naming it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            check_image_size("Load Reference Set", path, *im.size)
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except ReferenceImageError:
        raise
    except Exception as err:     # PIL raises many types (OSError, SyntaxError, ValueError...) on damaged files
        raise unreadable_image("Load Reference Set", path, err) from None
    return torch.from_numpy(rgb.copy())


def from_folder(folder: str, progress: Callable[[int, int], None] | None = None) -> ReferenceSet:
    names = list_images(folder)
    if not names:
        raise FileNotFoundError(f"Load Reference Set: no png/jpg/webp images in {folder}")
    images = []
    for i, name in enumerate(names):
        images.append(load_image(os.path.join(folder, name)))
        if progress:
            progress(i + 1, len(names))
    return ReferenceSet(images=images, names=names)


def from_batch(images: torch.Tensor, mask: torch.Tensor | None = None,
               mask_meaning: str = MASK_BACKGROUND) -> ReferenceSet:
    """images: (B, H, W, C) IMAGE; mask: (B|1, H, W) or (H, W) MASK, composited on white.

    With `MASK_BACKGROUND` (ComfyUI Load Image: mask = 1 - alpha) the object is 1 - mask;
    with `MASK_OBJECT` (segmentation masks) the object is the mask.
    """
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"Load Reference Set: images must be an IMAGE batch (B, H, W, 3), got {tuple(images.shape)}")
    rgb = images[..., :3].float().clamp(0, 1)
    if mask is not None:
        if mask_meaning not in MASK_MEANINGS:
            raise ValueError(f"Load Reference Set: mask_meaning must be one of {list(MASK_MEANINGS)}, "
                             f"got {mask_meaning!r}")
        m = mask.float()
        m = m[None] if m.ndim == 2 else m
        if m.shape[-2:] != rgb.shape[1:3]:
            raise ValueError(f"Load Reference Set: mask is {tuple(m.shape[-2:])} but the images are "
                             f"{tuple(rgb.shape[1:3])}; use a mask of the same size")
        if m.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"Load Reference Set: {m.shape[0]} masks for {rgb.shape[0]} images; give one mask "
                             "per image or a single mask")
        keep = (1.0 - m if mask_meaning == MASK_BACKGROUND else m).clamp(0, 1)[..., None]
        rgb = rgb * keep + (1.0 - keep)
    return ReferenceSet(images=list(rgb.unbind(0)), names=[f"image {i}" for i in range(rgb.shape[0])])


def combine(*sets: ReferenceSet | None) -> ReferenceSet:
    """Concatenate reference sets in order (batch first, then folder)."""
    out = ReferenceSet()
    for s in sets:
        if s is not None:
            out.images.extend(s.images)
            out.names.extend(s.names)
    return out
