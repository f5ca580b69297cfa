"""Draw a layout over an image (PIL only, so the ComfyUI preview node can reuse it).

Each box gets a colour, its index, its role (FG / BG / text for caption-only), its
alpha when known, and its caption.
"""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from refcomp_core import Layout

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0))


def instance_label(index: int, ref: object, caption: str | None, alpha: float | None, is_fg: bool | None,
                   max_caption: int = 24) -> str:
    """`#3 FG a=0.72 ref 1: a red car` style text for one box (a = alpha; ASCII for any font)."""
    if ref is None:
        role = "text"
    elif is_fg is None:
        role = "ref"
    else:
        role = "FG" if is_fg else "BG"
    parts = [f"#{index}", role]
    if alpha is not None and ref is not None:
        parts.append(f"a={alpha:.2f}")
    if ref is not None:
        parts.append(f"ref {ref}")
    text = " ".join(parts)
    if caption:
        short = caption if len(caption) <= max_caption else caption[:max_caption - 1] + "\u2026"
        text += f": {short}"
    return text


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:            # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_layout(image: Image.Image, layout: Layout, *, alpha: Sequence[float] | None = None,
                is_fg: Sequence[bool] | None = None, fill_opacity: float = 0.15) -> Image.Image:
    """A copy of `image` (any size; boxes are normalized) with the layout drawn over it."""
    n = len(layout.instances)
    for name, seq in (("alpha", alpha), ("is_fg", is_fg)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"draw_layout: {name} has {len(seq)} entries for {n} instances")
    base = image.convert("RGBA")
    w, h = base.size
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = max(1, round(min(w, h) / 256))
    font = _font(max(8, round(min(w, h) / 40)))
    # fills (larger boxes first), then every outline, then every label, so none hides another
    order = sorted(range(n), key=lambda i: -layout.instances[i].area)
    rects = {}
    for i in order:
        x0, y0, x1, y1 = layout.instances[i].box
        rects[i] = (round(x0 * w), round(y0 * h), max(round(x0 * w), round(x1 * w) - 1),
                    max(round(y0 * h), round(y1 * h) - 1))
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle(rects[i], fill=(*colour, round(255 * fill_opacity)))
    for i in order:
        draw.rectangle(rects[i], outline=(*PALETTE[i % len(PALETTE)], 255), width=line)
    for i in order:
        inst, rect, colour = layout.instances[i], rects[i], PALETTE[i % len(PALETTE)]
        label = instance_label(i, inst.ref, inst.caption, None if alpha is None else float(alpha[i]),
                               None if is_fg is None else bool(is_fg[i]))
        tx, ty = rect[0] + line + 1, rect[1] + line + 1
        box = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0, 160))
        draw.text((tx, ty), label, fill=(*colour, 255), font=font)
    return Image.alpha_composite(base, overlay).convert("RGB")
