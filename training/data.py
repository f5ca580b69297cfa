"""Step 2 of training: data.

The manifest is JSONL, one scene per line (DESIGN §6):

    {"image": "images/0001.jpg", "caption": "a living room", "width": 1024, "height": 768,
     "instances": [{"box": [0.1, 0.5, 0.45, 0.95], "ref": "crops/0001_0.png",
                    "caption": "a red armchair", "depth": "fg", "alpha": null}]}

Paths are relative to the manifest's folder. Lines that cannot be used (bad JSON, bad
layout, missing file) are skipped and counted when the manifest is read; an image or
crop that turns out unreadable at load time is replaced by the next readable sample of
the same bucket (counted), so every rank always gets full batches in the same order.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass

import torch

from refcomp_core import Layout, LayoutError, parse_layout

from .config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One usable manifest line. `layout` has integer refs indexing `refs` (crop paths)."""

    line: int
    image: str
    caption: str
    layout: Layout
    refs: tuple[str, ...]
    bucket: tuple[int, int]          # (width, height) px


@dataclass
class Skipped:
    """Bad samples by reason (logged, never fatal)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lines: set[int] = dataclasses.field(default_factory=set)      # manifest lines found unreadable

    def add(self, reason: str, where: str, line: int | None = None) -> None:
        self.counts[reason.split(" (")[0]] += 1
        if line is not None:
            self.lines.add(line)
        log.warning("skipping sample %s: %s", where, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def nearest_bucket(width: int, height: int, buckets: list[list[int]]) -> tuple[int, int]:
    """The bucket closest in log aspect ratio (ties: the larger area)."""
    import math
    aspect = math.log(width / height)
    best = min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))
    return int(best[0]), int(best[1])


def read_manifest(cfg: DataConfig, max_instances: int = 50) -> tuple[list[Sample], Skipped]:
    """Parse and validate every line; bad lines are skipped and counted."""
    if not os.path.isfile(cfg.manifest):
        raise FileNotFoundError(f"data.manifest: {cfg.manifest!r} not found; build one with `refcomp prepare-data`")
    root = os.path.dirname(os.path.abspath(cfg.manifest))
    samples, skipped = [], Skipped()
    with open(cfg.manifest, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{cfg.manifest}:{number}"
            try:
                samples.append(_sample(json.loads(text), number, root, cfg.buckets, max_instances))
            except json.JSONDecodeError as err:
                skipped.add(f"bad JSON ({err.msg})", where)
            except (LayoutError, ValueError, KeyError, TypeError) as err:
                skipped.add(f"bad layout ({err})", where)
            except FileNotFoundError as err:
                skipped.add(f"missing file ({err})", where)
    if not samples:
        raise ValueError(f"data.manifest: no usable samples in {cfg.manifest} ({skipped.total} skipped: "
                         f"{dict(skipped.counts)}); check the paths and boxes")
    log.info("manifest: %d samples, %d skipped %s", len(samples), skipped.total, dict(skipped.counts))
    return samples, skipped


def _sample(line: dict, number: int, root: str, buckets: list[list[int]], max_instances: int) -> Sample:
    if not isinstance(line, dict):
        raise ValueError("a manifest line must be a JSON object")
    image = os.path.join(root, line["image"])
    if not os.path.isfile(image):
        raise FileNotFoundError(image)
    doc = {"version": line.get("version", 1), "width": line["width"], "height": line["height"],
           "instances": line.get("instances", [])}
    layout = parse_layout(doc, ref_kind="path", max_instances=max_instances)
    refs: list[str] = []
    instances = []
    for inst in layout.instances:
        ref = None
        if inst.ref is not None:
            path = os.path.join(root, inst.ref)
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            if path not in refs:
                refs.append(path)
            ref = refs.index(path)
        instances.append(dataclasses.replace(inst, ref=ref))
    layout = dataclasses.replace(layout, instances=tuple(instances))
    caption = line.get("caption") or ""
    if not isinstance(caption, str):
        raise ValueError("caption must be a string")
    return Sample(line=number, image=image, caption=caption, layout=layout, refs=tuple(refs),
                  bucket=nearest_bucket(layout.width, layout.height, buckets))


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """All batches of one epoch (sample indices), one bucket per batch, seeded.

    The count is a multiple of `world` so every rank gets the same number.
    """
    rng = random.Random(seed * 100_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for i, s in enumerate(samples):
        by_bucket[s.bucket].append(i)
    batches = []
    for key in sorted(by_bucket):
        ids = by_bucket[key][:]
        rng.shuffle(ids)
        while len(ids) % batch_size:                                  # fill the last batch by wrapping
            ids.append(ids[len(ids) % len(by_bucket[key])])
        batches += [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    rng.shuffle(batches)
    while len(batches) % world:
        batches.append(batches[len(batches) % max(1, len(batches))])
    return batches


def batch_for_step(samples: list[Sample], cfg: DataConfig, seed: int, step: int, rank: int,
                   world: int) -> list[int]:
    """The sample indices one rank trains on at a global step: a pure function of the
    step, so a resumed run sees exactly the batches an uninterrupted one would."""
    per_epoch = len(_epoch(samples, cfg.batch_size, seed, 0, world)) // world
    epoch, pos = divmod(step, per_epoch)
    return _epoch(samples, cfg.batch_size, seed, epoch, world)[pos * world + rank]


_EPOCHS: dict[tuple, tuple[list[Sample], list[list[int]]]] = {}


def _epoch(samples: list[Sample], batch_size: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """epoch_batches, memoized (a few epochs at a time): shuffling is O(samples), a step is not."""
    key = (id(samples), batch_size, seed, epoch, world)
    if key not in _EPOCHS or _EPOCHS[key][0] is not samples:      # the entry holds the list: ids stay unique
        if len(_EPOCHS) >= 4:
            _EPOCHS.pop(next(iter(_EPOCHS)))
        _EPOCHS[key] = (samples, epoch_batches(samples, batch_size, seed, epoch, world))
    return _EPOCHS[key][1]


def load_rgb(path: str, size: tuple[int, int] | None = None, background: float = 1.0) -> torch.Tensor:
    """Image -> (3, H, W) float in [0, 1]; RGBA is composited over a grey level `background`.
    size: (width, height) to resize to. Raises OSError/ValueError when unreadable."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        im = im.convert("RGBA")
        if size is not None and im.size != size:
            im = im.resize(size, Image.BICUBIC)
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)          # (H, W, 4)
    rgb, a = arr[..., :3], arr[..., 3:]
    rgb = rgb * a + background * (1 - a)
    return rgb.permute(2, 0, 1).contiguous()                                         # (3, H, W)
