"""Reference images for the headless pipeline: a folder of png/jpg/webp files,
sorted by file name; a layout's `ref` is an index into that sorted list.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from refcomp_core import Layout
from refcomp_core.errors import LayoutError, ReferenceImageError
from refcomp_core.limits import check_image_size, unreadable_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")


def list_reference_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of `folder` sorted by name (case-sensitive, so `ref` indices are stable)."""
    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"--refs: reference folder not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"--refs: expected a folder of png/jpg/webp images, got the file {path}")
    return sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy; transparent pixels are composited on white (not black)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_references(folder: str | os.PathLike | None) -> list[Image.Image]:
    """The sorted reference images of `folder` as RGB (none when `folder` is None).
    Raises ReferenceImageError naming the file for an unreadable, damaged or too large image."""
    if folder is None:
        return []
    images = [read_reference(path) for path in list_reference_files(folder)]
    log.info("loaded %d reference image(s) from %s", len(images), folder)
    return images


def read_reference(path: Path) -> Image.Image:
    """One reference file as RGB; its size is checked from the header before decoding."""
    try:
        with Image.open(path) as im:
            check_image_size("--refs", path, *im.size)
            return to_rgb(im)
    except ReferenceImageError:
        raise
    except Exception as err:     # PIL raises many types (OSError, SyntaxError, ValueError...) on damaged files
        raise unreadable_image("--refs", path, err) from None


def check_reference_count(layout: Layout, count: int, names: Sequence[str] = ()) -> None:
    """The number of reference images (`count`, named `names` when from a folder) must be what
    the layout references: highest `ref` + 1.

    Indices beyond the list are already refused by `parse_layout(num_refs=...)`;
    this refuses extra images (a folder that does not belong to this layout).
    Unused indices below the highest one only log a warning.
    """
    used = layout.referenced
    need = used[-1] + 1 if used else 0
    if count != need:
        listed = f" ({', '.join(names)})" if names else ""
        raise LayoutError(f"--refs: {count} reference image(s){listed}, but the layout's instances[].ref "
                          f"use indices {used or 'none'} so exactly {need} are expected (sorted by file name); "
                          "remove the extra images or fix the layout's ref indices")
    unused = sorted(set(range(need)) - set(used))
    if unused:
        log.warning("reference image(s) %s are not referenced by any instance and are ignored", unused)
