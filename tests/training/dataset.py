"""A tiny generated training set: coloured shapes on noise, RGBA crops, a manifest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(64, 64), (64, 64), (64, 96), (64, 64), (64, 96), (64, 64)]


def _scene(rng: np.random.Generator, w: int, h: int, n: int) -> tuple[np.ndarray, list[list[float]]]:
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    boxes = []
    for _ in range(n):
        bw, bh = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
        x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
        box = [round(x0, 3), round(y0, 3), round(x0 + bw, 3), round(y0 + bh, 3)]
        colour = rng.integers(100, 255, 3)
        img[int(box[1] * h):int(box[3] * h), int(box[0] * w):int(box[2] * w)] = colour
        boxes.append(box)
    return img, boxes


def make_dataset(root: Path, *, bad: bool = False, seed: int = 0) -> Path:
    """Write images/, crops/ and manifest.jsonl under root (instance 0 of each scene has a
    manual alpha of 0.9, so every scene has an FG instance); with `bad`, add one line of
    each kind of bad sample (missing image, bad box, unreadable image, bad JSON)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "crops").mkdir(exist_ok=True)
    lines = []
    for k, (w, h) in enumerate(SIZES):
        img, boxes = _scene(rng, w, h, 2 + k % 2)
        Image.fromarray(img).save(root / "images" / f"{k}.png")
        instances = []
        for j, box in enumerate(boxes):
            crop = img[int(box[1] * h):int(box[3] * h), int(box[0] * w):int(box[2] * w)]
            alpha = np.full(crop.shape[:2] + (1,), 255, dtype=np.uint8)
            alpha[: crop.shape[0] // 4] = 0
            Image.fromarray(np.concatenate([crop, alpha], -1), mode="RGBA").save(root / "crops" / f"{k}_{j}.png")
            instances.append({"box": box, "ref": f"crops/{k}_{j}.png", "caption": "a thing" if j else None,
                              "depth": ["fg", "bg", "mg"][j % 3], "alpha": 0.9 if j == 0 else None})
        instances.append({"box": [0.0, 0.0, 0.5, 0.5], "ref": None, "caption": "an ant", "depth": None,
                          "alpha": None})
        lines.append({"image": f"images/{k}.png", "caption": "shapes on noise", "width": w, "height": h,
                      "instances": instances})
    text = [json.dumps(line) for line in lines]
    if bad:
        (root / "images" / "broken.png").write_bytes(b"not a png at all")
        text.append(json.dumps({**lines[0], "image": "images/missing.png"}))
        text.append(json.dumps({**lines[0], "instances": [{"box": [0.5, 0.5, 0.4, 0.9], "ref": None}]}))
        text.append(json.dumps({**lines[0], "image": "images/broken.png"}))
        text.append("{not json")
    (root / "manifest.jsonl").write_text("\n".join(text) + "\n")
    return root / "manifest.jsonl"
