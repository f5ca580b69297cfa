"""Scoring a generated toy image against the layout it was asked for.

Grounding (every instance): the largest blob of the instance's colour (colours are
distinct within a scene) is its object; IoU of the blob's bounding box with the box.
Identity (FG instances): the blob, of any colour, whose bounding box best matches the
instance's box; its colour class, stretched silhouette and texture are compared with the
reference's truth (which rides in the layout's extra keys `colour`, `shape`, `texture`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .analysis import Blob, blobs, box_iou, classify_shape, classify_texture

MIN_IDENTITY_IOU = 0.1          # below this no blob is taken to be the instance's object


@dataclass(frozen=True)
class InstanceScore:
    depth: str | None
    iou: float                   # grounding IoU (0 when the colour is absent)
    colour_ok: bool | None       # identity, FG instances only (None otherwise)
    shape_ok: bool | None
    texture_ok: bool | None


def _pixel_box(box: list[float], size: int) -> tuple[float, float, float, float]:
    return box[0] * size, box[1] * size, box[2] * size, box[3] * size


def score_image(img: np.ndarray, layout: dict) -> list[InstanceScore]:
    """img: (H, W, 3) in [0, 1]; layout: a toy layout v1 dict (with truth keys) -> one score per instance."""
    size = img.shape[0]
    every = blobs(img)
    scores = []
    for inst in layout["instances"]:
        box = _pixel_box(inst["box"], size)
        own = [b for b in every if b.colour == inst["colour"]]
        iou = box_iou(own[0].box, box) if own else 0.0
        ident: tuple[bool | None, ...] = (None, None, None)
        if inst.get("depth") == "fg":
            ident = _identity(img, every, box, inst)
        scores.append(InstanceScore(inst.get("depth"), iou, *ident))
    return scores


def _identity(img: np.ndarray, every: list[Blob], box: tuple[float, ...], inst: dict) -> tuple[bool, bool, bool]:
    best = max(every, key=lambda b: box_iou(b.box, box), default=None)
    if best is None or box_iou(best.box, box) < MIN_IDENTITY_IOU:
        return False, False, False
    return (best.colour == inst["colour"], classify_shape(best) == inst["shape"],
            classify_texture(img, best) == inst["texture"])


def summarize(scores: list[InstanceScore]) -> dict[str, float | int]:
    """mIoU and success@0.5 for FG and for BG (= "mg" or "bg"), identity accuracy per attribute (FG)."""
    out: dict[str, float | int] = {}
    groups = {"fg": [s for s in scores if s.depth == "fg"], "bg": [s for s in scores if s.depth in ("mg", "bg")]}
    for name, group in groups.items():
        ious = np.array([s.iou for s in group], dtype=np.float64)
        out[f"{name}_n"] = len(group)
        out[f"{name}_miou"] = float(ious.mean()) if len(group) else float("nan")
        out[f"{name}_success"] = float((ious >= 0.5).mean()) if len(group) else float("nan")
    for attr in ("colour", "shape", "texture"):
        vals = [getattr(s, f"{attr}_ok") for s in groups["fg"]]
        out[f"fg_{attr}_acc"] = float(np.mean(vals)) if vals else float("nan")
    return out


def scores_as_dicts(scores: list[InstanceScore]) -> list[dict]:
    return [asdict(s) for s in scores]
