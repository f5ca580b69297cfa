"""Procedural toy scenes, seeded and generated on the fly.

A scene is a pale background (solid or vertical gradient) and 1-8 objects, each a
shape x colour x texture in an integer pixel box. Colours are distinct within a scene
(the evaluator finds an object by its colour). Bigger objects tend to lie behind:
z-order sorts a jittered area, each new object is placed so that every object behind
keeps at least `MIN_VISIBLE` of its pixels. Depth comes from the z-rank: the back ~30 %
is "bg", the front ~40 % "fg", the rest "mg". Each object also has a reference box: the
same object drawn alone on white at another scale and position.

Scenes of one split never depend on another split's seeds: `scene_seed(split, i)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import Box, background, paint, shape_mask
from .vocab import BACKGROUNDS, COLOURS, SHAPES, TEXTURES, background_caption, instance_caption

SPLITS: dict[str, int] = {"train": 0, "eval": 1, "tune": 2, "demo": 3, "test": 4}
MIN_VISIBLE = 0.5
MIN_SIDE, MAX_SIDE = 12, 40          # object box sides in px on a 64-px canvas (scaled with size)
LAYOUT_PX_PER_TOKEN = 16             # layout v1 counts FLUX pixels: one toy token = one FLUX token


@dataclass(frozen=True)
class ToyObject:
    shape: str
    colour: str
    texture: str
    box: Box                  # (x0, y0, x1, y1) px in the scene, end exclusive
    ref_box: Box              # where the reference draws it on a white canvas
    z: int                    # 0 = back
    depth: str                # "bg" | "mg" | "fg"

    @property
    def caption(self) -> str:
        return instance_caption(self.colour, self.texture, self.shape)


@dataclass(frozen=True)
class ToyScene:
    size: int
    background: tuple[str, str, str]          # (kind, top colour, bottom colour)
    objects: tuple[ToyObject, ...]            # in z-order, back first
    seed: int | None = None

    @property
    def caption(self) -> str:
        """Global caption, objects back to front: 'a red striped star and a blue dotted circle on a grey background'."""
        names = [o.caption for o in self.objects]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{listed} {background_caption(*self.background)}"

    def render(self) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]."""
        canvas = background(*self.background, self.size)
        for obj in self.objects:
            paint(canvas, obj.shape, obj.colour, obj.texture, obj.box)
        return canvas

    def visible_masks(self) -> np.ndarray:
        """Pixels where each object is the top-most one -> (n, H, W) bool."""
        owner = np.full((self.size, self.size), -1)
        for i, obj in enumerate(self.objects):
            owner[shape_mask(obj.shape, obj.box, self.size)] = i
        return np.stack([owner == i for i in range(len(self.objects))]) if self.objects else \
            np.zeros((0, self.size, self.size), dtype=bool)

    def reference(self, i: int) -> np.ndarray:
        """Object i alone on white at its reference scale and position -> (H, W, 3) float32."""
        obj = self.objects[i]
        canvas = np.ones((self.size, self.size, 3), dtype=np.float32)
        paint(canvas, obj.shape, obj.colour, obj.texture, obj.ref_box)
        return canvas

    def layout(self) -> dict:
        """Layout v1 document (boxes normalized, ref i = object i). Truth rides along as extra keys."""
        s = self.size
        side = s // 8 * LAYOUT_PX_PER_TOKEN
        return {"version": 1, "width": side, "height": side, "caption": self.caption,
                "toy": {"size": s, "background": list(self.background), "seed": self.seed},
                "instances": [{"box": [o.box[0] / s, o.box[1] / s, o.box[2] / s, o.box[3] / s], "ref": i,
                               "caption": o.caption, "depth": o.depth, "alpha": None, "shape": o.shape,
                               "colour": o.colour, "texture": o.texture, "ref_box": list(o.ref_box)}
                              for i, o in enumerate(self.objects)]}


def scene_seed(split: str, index: int) -> int:
    """A 63-bit seed for scene `index` of `split`; splits draw from independent streams."""
    if split not in SPLITS:
        raise ValueError(f"unknown toy split {split!r}; use one of {list(SPLITS)}")
    return int(np.random.SeedSequence([SPLITS[split], index]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def depth_label(rank: int, n: int) -> str:
    """Depth from the z-rank (0 = back) among n objects."""
    q = rank / (n - 1) if n > 1 else 1.0
    return "bg" if q < 0.3 else "fg" if q > 0.6 else "mg"


def _random_box(rng: np.random.Generator, w: int, h: int, size: int) -> Box:
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))
    return x0, y0, x0 + w, y0 + h


def _reference_box(rng: np.random.Generator, w: int, h: int, size: int) -> Box:
    """Same aspect ratio, another scale: the longer side becomes 40-75 % of the canvas."""
    scale = rng.uniform(0.40, 0.75) * size / max(w, h)
    rw, rh = max(4, round(w * scale)), max(4, round(h * scale))
    return _random_box(rng, rw, rh, size)


def sample_scene(seed: int, *, size: int = 64, min_objects: int = 1, max_objects: int = 8,
                 tries: int = 30) -> ToyScene:
    """Deterministic per (seed, size, min_objects, max_objects)."""
    if not 1 <= min_objects <= max_objects <= len(COLOURS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(COLOURS)} (colours are distinct per "
                         f"scene), got {min_objects}..{max_objects}")
    if size % 8 or size < 32:
        raise ValueError(f"toy scene size must be a multiple of 8 and >= 32, got {size}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(min_objects, max_objects + 1))
    bg_names = list(BACKGROUNDS)
    kind = "gradient" if rng.random() < 0.4 else "solid"
    top, bottom = (str(c) for c in rng.choice(bg_names, size=2, replace=False))
    colours = [str(c) for c in rng.permutation(list(COLOURS))[:n]]
    lo, hi = round(MIN_SIDE * size / 64), round(MAX_SIDE * size / 64)
    sides = [(int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))) for _ in range(n)]
    order = np.argsort([-w * h * rng.uniform(0.7, 1.3) for w, h in sides], kind="stable")   # big first (back)
    placed: list[tuple[int, Box, str]] = []            # (object index k, box, shape), back first
    areas: list[int] = []
    owner = np.full((size, size), -1)
    for k in order:
        w, h = sides[k]
        shape = str(SHAPES[int(rng.integers(len(SHAPES)))])
        for _ in range(tries):
            box = _random_box(rng, w, h, size)
            mask = shape_mask(shape, box, size)
            trial = np.where(mask, len(placed), owner)
            if all((trial == j).sum() >= MIN_VISIBLE * area for j, area in enumerate(areas)):
                owner = trial
                placed.append((int(k), box, shape))
                areas.append(int(mask.sum()))
                break
    objects = []
    for z, (k, box, shape) in enumerate(placed):
        w, h = sides[k]
        objects.append(ToyObject(shape=shape, colour=colours[k], texture=str(TEXTURES[int(rng.integers(4))]),
                                 box=box, ref_box=_reference_box(rng, w, h, size), z=z,
                                 depth=depth_label(z, len(placed))))
    return ToyScene(size=size, background=(kind, top, bottom if kind == "gradient" else top),
                    objects=tuple(objects), seed=seed)
