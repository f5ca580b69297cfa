"""Reading toy images back: colour classes, connected components, shape and texture.

Rule-based (no learned parts), so it cannot share a bias with the models it scores.
An "object pixel" is saturated (HSV s > `MIN_SAT`) and not black (v > `MIN_VAL`);
backgrounds are pale (s <= 0.2). Its colour class is the palette hue nearest its hue.
Images are float (H, W, 3) in [0, 1]; boxes are (x0, y0, x1, y1) px, end exclusive.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .render import shape_template
from .vocab import COLOURS, SHAPES

MIN_SAT, MIN_VAL = 0.45, 0.15
MIN_PIXELS = 6                      # smaller components are noise
TEMPLATE_RES = 16
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PALETTE_HUES = np.array([colorsys.rgb_to_hsv(*rgb)[0] * 360.0 for rgb in COLOURS.values()])


def hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) RGB in [0, 1] -> hue in degrees, saturation, value, each (H, W)."""
    img = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
    v = img.max(axis=-1)
    c = v - img.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-9), 0.0)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    safe = np.maximum(c, 1e-9)
    h = np.where(v == r, ((g - b) / safe) % 6, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return (h * 60.0) % 360.0, s, v


def colour_classes(img: np.ndarray) -> np.ndarray:
    """Palette index of every object pixel, -1 elsewhere -> (H, W) int."""
    h, s, v = hsv(img)
    dist = np.abs(h[..., None] - PALETTE_HUES)
    dist = np.minimum(dist, 360.0 - dist)                                       # (H, W, k)
    cls = dist.argmin(axis=-1)
    return np.where((s > MIN_SAT) & (v > MIN_VAL), cls, -1)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool mask -> (labels (H, W) with -1 outside, count)."""
    hgt, wid = mask.shape
    big = hgt * wid
    lab = np.where(mask, np.arange(big).reshape(hgt, wid), big)
    while True:
        new = lab.copy()
        new[1:] = np.minimum(new[1:], np.where(mask[1:], lab[:-1], big))
        new[:-1] = np.minimum(new[:-1], np.where(mask[:-1], lab[1:], big))
        new[:, 1:] = np.minimum(new[:, 1:], np.where(mask[:, 1:], lab[:, :-1], big))
        new[:, :-1] = np.minimum(new[:, :-1], np.where(mask[:, :-1], lab[:, 1:], big))
        new = np.where(mask, new, big)
        flat = np.append(new.ravel(), big)
        new = np.where(mask, flat[flat[new]], big)                               # pointer jumping
        if np.array_equal(new, lab):
            break
        lab = new
    roots, dense = np.unique(lab[mask], return_inverse=True)
    out = np.full(mask.shape, -1)
    out[mask] = dense
    return out, len(roots)


@dataclass(frozen=True)
class Blob:
    """One connected component of one colour class."""

    colour: str
    mask: np.ndarray            # (H, W) bool
    box: tuple[int, int, int, int]

    @property
    def size(self) -> int:
        return int(self.mask.sum())


def blobs(img: np.ndarray, colour: str | None = None) -> list[Blob]:
    """Components (>= MIN_PIXELS) per colour class, largest first; only `colour` when given."""
    classes = colour_classes(img)
    wanted = range(len(COLOUR_NAMES)) if colour is None else [COLOUR_NAMES.index(colour)]
    found = []
    for k in wanted:
        labels, count = components(classes == k)
        for j in range(count):
            m = labels == j
            if m.sum() >= MIN_PIXELS:
                ys, xs = np.nonzero(m)
                found.append(Blob(COLOUR_NAMES[k], m, (int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                                         int(ys.max()) + 1)))
    return sorted(found, key=lambda b: -b.size)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def classify_shape(blob: Blob) -> str:
    """Stretch the blob's bounding box to TEMPLATE_RES^2 and take the best-IoU silhouette."""
    x0, y0, x1, y1 = blob.box
    r = TEMPLATE_RES
    ys = np.clip((y0 + (np.arange(r) + 0.5) * (y1 - y0) / r).astype(int), y0, y1 - 1)
    xs = np.clip((x0 + (np.arange(r) + 0.5) * (x1 - x0) / r).astype(int), x0, x1 - 1)
    sample = blob.mask[np.ix_(ys, xs)].astype(np.float32)
    scores = [(np.minimum(sample, t).sum() / max(np.maximum(sample, t).sum(), 1e-9))
              for t in (shape_template(s, r) for s in SHAPES)]
    return SHAPES[int(np.argmax(scores))]


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def classify_texture(img: np.ndarray, blob: Blob) -> str:
    """Solid / dots / stripes / checker from the blob's dark-shade map (phase-free).

    dark = value below 72 % of the blob's bright value. Fraction of dark pixels: ~0 solid,
    ~0.2 dots, ~0.5 stripes and checker; stripes are horizontal, so rows are pure
    (all dark or all light) while columns alternate; checker rows and columns are both mixed.
    """
    inner = _erode(blob.mask)
    if inner.sum() < MIN_PIXELS:
        inner = blob.mask
    _, _, v = hsv(img)
    bright = np.percentile(v[inner], 90)
    dark = (v < 0.72 * bright) & inner
    frac = dark.sum() / inner.sum()
    if frac < 0.08:
        return "solid"
    if frac < 0.33:
        return "dots"
    return "stripes" if _purity(dark, inner, axis=1) - _purity(dark, inner, axis=0) > 0.3 else "checker"


def _purity(dark: np.ndarray, inner: np.ndarray, axis: int) -> float:
    """Mean over lines (rows for axis=1) of |2 * dark fraction - 1|, weighted by line length."""
    count = inner.sum(axis=axis)
    frac = dark.sum(axis=axis) / np.maximum(count, 1)
    return float((np.abs(2 * frac - 1) * count).sum() / max(count.sum(), 1))
