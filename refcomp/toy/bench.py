"""The toy measurement: generate the held-out layouts under each model row, score them,
and track α. Held-out layouts come from the "eval" split, which nothing trains or tunes on.

Rows: backbone with captions only; after stages 1, 2, 3; ablations "α frozen at 0.5"
(trained with every α overridden to 0.5) and "no bridge" (stage 3 with the bridge zeroed).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from refcomp_core import RefCompAdapter, build_state, parse_layout

from .data import instance_features
from .evaluate import score_image, summarize
from .parts import ToyParts
from .sample import SampleConfig, generate
from .world import ToyScene, sample_scene, scene_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    count: int = 64
    batch: int = 16
    sample: SampleConfig = SampleConfig()
    noise_seed: int = 1234


def eval_scenes(count: int, size: int = 64) -> list[ToyScene]:
    """The held-out layouts (split "eval")."""
    return [sample_scene(scene_seed("eval", i), size=size) for i in range(count)]


VALIDATION_START = 20_000_000     # train-split scene indices from here on: never trained on, never the eval seed


def validation_scenes(count: int, size: int = 64) -> list[ToyScene]:
    """Layouts for choosing settings: the "train" split's stream far past any training scene
    (`refcomp toy reproduce` trains on the first `train_scenes`), so tuning never sees "eval"."""
    return [sample_scene(scene_seed("train", VALIDATION_START + i), size=size) for i in range(count)]


def with_alpha(layout: dict, alpha: float | None) -> dict:
    """A copy of a layout with every instance's manual α set (None leaves it)."""
    if alpha is None:
        return layout
    out = copy.deepcopy(layout)
    for inst in out["instances"]:
        inst["alpha"] = alpha
    return out


def no_bridge(adapter: RefCompAdapter) -> RefCompAdapter:
    """A copy of the adapter whose feedback bridge outputs 0 (its up-projections zeroed)."""
    out = copy.deepcopy(adapter)
    with torch.no_grad():
        for block in out.bridge.per_block:
            block.up.weight.zero_()
    return out


def evaluate_row(parts: ToyParts, adapter: RefCompAdapter | None, cfg: EvalConfig,
                 alpha: float | None = None, scenes: list[ToyScene] | None = None,
                 desc: str = "eval") -> tuple[dict, list[np.ndarray]]:
    """Generate and score every held-out layout -> (summary, images (H, W, 3))."""
    from tqdm.auto import tqdm
    scenes = scenes or eval_scenes(cfg.count, cfg.sample.size)
    scores, images = [], []
    for start in tqdm(range(0, len(scenes), cfg.batch), desc=desc):
        chunk = scenes[start:start + cfg.batch]
        layouts = [with_alpha(s.layout(), alpha) for s in chunk]
        refs = [[s.reference(k) for k in range(len(s.objects))] for s in chunk]
        out = generate(parts, [s.caption for s in chunk], seeds=[cfg.noise_seed + start + j for j in range(len(chunk))],
                       config=cfg.sample, adapter=adapter, layouts=layouts if adapter else None,
                       references=refs if adapter else None)
        for img, scene in zip(out, chunk):
            arr = img.permute(1, 2, 0).cpu().numpy()
            images.append(arr)
            scores += score_image(arr, scene.layout())
    return summarize(scores), images


@torch.no_grad()
def alpha_by_depth(parts: ToyParts, adapter: RefCompAdapter, scenes: list[ToyScene]) -> dict[str, float]:
    """Mean and spread of predicted α for instances labelled fg vs mg/bg, on held-out layouts."""
    fg, bg = [], []
    for scene in scenes:
        doc = scene.layout()
        refs = [scene.reference(k) for k in range(len(scene.objects))]
        state = build_state(adapter, parse_layout(doc, num_refs=len(refs)), instance_features(parts, doc, refs))
        for inst, a in zip(doc["instances"], state.alpha.tolist()):
            (fg if inst["depth"] == "fg" else bg).append(a)
    stats = {}
    for name, vals in (("fg", fg), ("bg", bg)):
        v = np.array(vals) if vals else np.array([np.nan])
        stats.update({f"{name}_mean": float(v.mean()), f"{name}_std": float(v.std()),
                      f"{name}_routed_fg": float((v >= 0.5).mean())})
    return stats
