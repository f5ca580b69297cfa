"""Rasterising toy objects with numpy: shape silhouettes stretched to fill a box,
textures in absolute image coordinates, backgrounds.

Coordinates: pixel (row y, col x) has its centre at (x + 0.5, y + 0.5). A box is
`(x0, y0, x1, y1)` in pixels, end exclusive. A shape is defined on the unit square
[0, 1]^2 (u right, v down) and spans it exactly, so its silhouette's bounding box is
its box. Images are float32 (H, W, 3) in [0, 1].
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .vocab import BACKGROUNDS, COLOURS, DARK, SHAPES, TEXTURE_PERIOD

Box = tuple[int, int, int, int]


def _normalise(points: np.ndarray) -> np.ndarray:
    """Stretch polygon vertices (k, 2) to span [0, 1]^2 exactly."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - lo) / (hi - lo)


def _star(tips: int = 5, inner: float = 0.48) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * tips) * math.pi / tips
    radii = np.where(np.arange(2 * tips) % 2 == 0, 1.0, inner)
    return _normalise(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1))


POLYGONS: dict[str, np.ndarray] = {
    "triangle": np.array([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0]]),
    "diamond": np.array([[0.5, 0.0], [1.0, 0.5], [0.5, 1.0], [0.0, 0.5]]),
    "hexagon": np.array([[0.25, 0.0], [0.75, 0.0], [1.0, 0.5], [0.75, 1.0], [0.25, 1.0], [0.0, 0.5]]),
    "star": _star(),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule for points (u, v) of any shape against a closed polygon (k, 2)."""
    inside = np.zeros(u.shape, dtype=bool)
    k = len(poly)
    for i in range(k):
        (ua, va), (ub, vb) = poly[i], poly[(i + 1) % k]
        crosses = (va > v) != (vb > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            u_cross = ua + (v - va) * (ub - ua) / (vb - va)
        inside ^= crosses & (u < u_cross)
    return inside


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, stretched to the unit square."""
    x = (u - 0.5) * 2.0 * 1.14
    y = (0.5 - v) * 2.0 * 1.07 + 0.17          # bounding box of the curve is about x in +-1.14, y in [-1, 1.14]
    return (x ** 2 + y ** 2 - 1.0) ** 3 - x ** 2 * y ** 3 <= 0.0


def shape_unit(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in [0, 1]^2 in a shape's silhouette (bool, same shape as u)."""
    if shape == "square":
        return (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "cross":
        arm = (0.32, 0.68)
        return ((u >= arm[0]) & (u <= arm[1])) | ((v >= arm[0]) & (v <= arm[1]))
    if shape == "heart":
        return _heart(u, v)
    if shape in POLYGONS:
        return _inside_polygon(u, v, POLYGONS[shape])
    raise ValueError(f"unknown toy shape {shape!r}; use one of {list(SHAPES)}")


def shape_mask(shape: str, box: Box, size: int) -> np.ndarray:
    """Silhouette of `shape` stretched into pixel box `box` on a size x size canvas -> (H, W) bool."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u = (xs - x0) / (x1 - x0)
    v = (ys - y0) / (y1 - y0)
    in_box = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    return in_box & shape_unit(shape, np.clip(u, 0, 1), np.clip(v, 0, 1))


@lru_cache(maxsize=64)
def shape_template(shape: str, res: int = 16) -> np.ndarray:
    """The silhouette filling a res x res square (float32), used by the evaluator."""
    return shape_mask(shape, (0, 0, res, res), res).astype(np.float32)


def texture_dark(texture: str, size: int) -> np.ndarray:
    """Where the texture's dark shade goes, in absolute image coordinates -> (H, W) bool.

    Period `TEXTURE_PERIOD` (8 px): stripes are horizontal bands of 4 px, checker cells are
    4 px, dots are 12-px round dots centred in each 8x8 cell.
    """
    ys, xs = np.mgrid[0:size, 0:size]
    half = TEXTURE_PERIOD // 2
    if texture == "solid":
        return np.zeros((size, size), dtype=bool)
    if texture == "stripes":
        return (ys // half) % 2 == 1
    if texture == "checker":
        return (xs // half + ys // half) % 2 == 1
    if texture == "dots":
        c = TEXTURE_PERIOD / 2
        return ((xs % TEXTURE_PERIOD) + 0.5 - c) ** 2 + ((ys % TEXTURE_PERIOD) + 0.5 - c) ** 2 <= 2.6
    raise ValueError(f"unknown toy texture {texture!r}; use solid, stripes, dots or checker")


def background(kind: str, top: str, bottom: str, size: int) -> np.ndarray:
    """Solid or vertical-gradient background -> (H, W, 3) float32."""
    a = np.array(BACKGROUNDS[top], dtype=np.float32)
    b = np.array(BACKGROUNDS[bottom], dtype=np.float32)
    if kind == "solid":
        return np.broadcast_to(a, (size, size, 3)).copy()
    if kind != "gradient":
        raise ValueError(f"unknown background kind {kind!r}; use 'solid' or 'gradient'")
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
    return np.broadcast_to(a * (1 - t) + b * t, (size, size, 3)).copy()


def paint(canvas: np.ndarray, shape: str, colour: str, texture: str, box: Box) -> np.ndarray:
    """Draw one object over `canvas` (H, W, 3) in place; returns its silhouette mask (H, W)."""
    size = canvas.shape[0]
    mask = shape_mask(shape, box, size)
    main = np.array(COLOURS[colour], dtype=np.float32)
    dark = texture_dark(texture, size)
    canvas[mask & ~dark] = main
    canvas[mask & dark] = main * DARK
    return mask
