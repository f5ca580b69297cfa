"""Reference thumbnails for the layout canvas, confined to ComfyUI's input folder.

- `folder_listing` names the images of an input subfolder in reference-set order (the order
  Load Reference Set uses), with a thumbnail URL for each.
- `thumbnail_png` is one small PNG of a listed image, made exactly as the reference set reads
  it (EXIF turn, transparency on white), so the canvas shows what the encoders will see.
- `set_thumbnails` writes the thumbnails of an executed reference set (batch images too) into
  ComfyUI's temp folder for the canvas node's UI output.

No ComfyUI import: the routes in `extension.py` and the canvas node pass the folders in.
"""
from __future__ import annotations

import io
import os
import uuid
from urllib.parse import urlencode

import numpy as np
import torch

from . import references as refs
from .types import ReferenceSet

THUMB_PX = 128
ROUTE_LIST = "/refcomp/references"
ROUTE_THUMB = "/refcomp/thumbnail"
UI_KEY = "refcomp_references"


def folder_listing(input_dir: str, folder: str) -> dict:
    """{"folder", "names", "urls"} for an input subfolder (ValueError / FileNotFoundError when bad).
    URLs carry the file's mtime, so a changed file gets a new URL."""
    path = refs.resolve_subfolder(input_dir, folder)
    names = refs.list_images(path)
    urls = [f"{ROUTE_THUMB}?" + urlencode({"folder": folder, "name": n,
                                           "v": int(os.path.getmtime(os.path.join(path, n)))}) for n in names]
    return {"folder": folder, "names": names, "urls": urls}


def thumbnail_path(input_dir: str, folder: str, name: str) -> str:
    """Path of image `name` of an input subfolder; only names the folder lists are served."""
    path = refs.resolve_subfolder(input_dir, folder)
    if name not in refs.list_images(path):
        raise FileNotFoundError(f"Layout Canvas: {name!r} is not a reference image of input folder {folder!r}")
    return os.path.join(path, name)


def to_png(image: torch.Tensor, size: int = THUMB_PX) -> bytes:
    """image: (H, W, 3) float in [0, 1] -> PNG bytes, longest side at most `size`."""
    from PIL import Image

    pil = Image.fromarray((image[..., :3].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    pil.thumbnail((size, size))
    out = io.BytesIO()
    pil.save(out, format="PNG")
    return out.getvalue()


def thumbnail_png(path: str, size: int = THUMB_PX) -> bytes:
    """PNG thumbnail of one reference file, read as the reference set reads it."""
    return to_png(refs.load_image(path), size)


def set_thumbnails(references: ReferenceSet, temp_dir: str, size: int = THUMB_PX) -> list[dict]:
    """Write a thumbnail per reference into temp_dir/refcomp/; -> ComfyUI image refs for the UI output."""
    sub = "refcomp"
    os.makedirs(os.path.join(temp_dir, sub), exist_ok=True)
    tag = uuid.uuid4().hex[:10]
    out = []
    for i, image in enumerate(references.images):
        name = f"refs_{tag}_{i:02d}.png"
        with open(os.path.join(temp_dir, sub, name), "wb") as f:
            f.write(to_png(image, size))
        out.append({"filename": name, "subfolder": sub, "type": "temp"})
    return out
