"""`refcomp demo`: compose one toy scene from a layout and its references with the
bundled weights, and write references | layout | result side by side as one PNG.

A toy layout is a layout v1 document whose instances also name the reference's truth
(`shape`, `colour`, `texture`, optional `ref_box`), from which the reference images are
drawn. The bundled example is `examples/layout.json`; `--scene-seed N` samples a fresh
layout from the world instead.
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
from PIL import Image, ImageDraw


from .data import to_uint8
from .parts import ADAPTER_FILE, load_parts
from .render import paint
from .sample import SampleConfig, generate
from .vocab import COLOURS, SHAPES, TEXTURES, instance_caption
from .world import ToyScene, sample_scene, scene_seed

log = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLED_WEIGHTS = os.path.join(HERE, "weights")
EXAMPLE_LAYOUT = os.path.join(HERE, "examples", "layout.json")
PANEL = 256
DEPTH_COLOURS = {"fg": (220, 40, 40), "mg": (230, 170, 0), "bg": (40, 90, 230), None: (90, 90, 90)}


def references_from_layout(doc: dict, size: int = 64) -> list[np.ndarray]:
    """One reference image per ref index, drawn from the first instance naming it."""
    refs: dict[int, np.ndarray] = {}
    for i, inst in enumerate(doc.get("instances", [])):
        r = inst.get("ref")
        if r is None or r in refs:
            continue
        for key, allowed in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("texture", TEXTURES)):
            if inst.get(key) not in allowed:
                raise ValueError(f"layout.instances[{i}].{key}: a toy layout names the reference's {key} "
                                 f"(one of {list(allowed)}), got {inst.get(key)!r}")
        box = tuple(inst.get("ref_box") or (size // 5, size // 5, size - size // 5, size - size // 5))
        canvas = np.ones((size, size, 3), dtype=np.float32)
        paint(canvas, inst["shape"], inst["colour"], inst["texture"], box)
        refs[r] = canvas
    missing = [r for r in range(len(refs)) if r not in refs]
    if missing:
        raise ValueError(f"layout: reference indices must be 0..{len(refs) - 1} without gaps; missing {missing}")
    return [refs[r] for r in range(len(refs))]


def global_caption(doc: dict) -> str:
    if doc.get("caption"):
        return str(doc["caption"])
    names = [i.get("caption") or instance_caption(i["colour"], i["texture"], i["shape"]) for i in doc["instances"]]
    return ", ".join(names)


def _refs_panel(refs: list[np.ndarray]) -> Image.Image:
    panel = Image.new("RGB", (PANEL, PANEL), (245, 245, 245))
    cols = max(1, math.ceil(math.sqrt(len(refs))))
    tile = PANEL // cols
    for k, ref in enumerate(refs):
        img = Image.fromarray(to_uint8(ref)).resize((tile - 4, tile - 4), Image.NEAREST)
        panel.paste(img, ((k % cols) * tile + 2, (k // cols) * tile + 2))
    return panel


def _layout_panel(doc: dict, refs: list[np.ndarray]) -> Image.Image:
    panel = Image.new("RGB", (PANEL, PANEL), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for inst in doc["instances"]:
        x0, y0, x1, y1 = (round(v * PANEL) for v in inst["box"])
        if inst.get("ref") is not None:
            ref = refs[inst["ref"]]
            rb = inst.get("ref_box") or (0, 0, ref.shape[1], ref.shape[0])
            crop = ref[rb[1]:rb[3], rb[0]:rb[2]]
            size = (max(1, x1 - x0), max(1, y1 - y0))
            mask = Image.fromarray(((crop < 0.999).any(-1) * 255).astype(np.uint8)).resize(size, Image.NEAREST)
            panel.paste(Image.fromarray(to_uint8(crop)).resize(size, Image.NEAREST), (x0, y0), mask)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=DEPTH_COLOURS.get(inst.get("depth")), width=2)
    return panel


def composite(refs: list[np.ndarray], doc: dict, result: np.ndarray) -> Image.Image:
    """references | layout | result, each PANEL x PANEL px -> (3 * PANEL) x PANEL image."""
    out = Image.new("RGB", (3 * PANEL, PANEL), (255, 255, 255))
    out.paste(_refs_panel(refs), (0, 0))
    out.paste(_layout_panel(doc, refs), (PANEL, 0))
    out.paste(Image.fromarray(to_uint8(result)).resize((PANEL, PANEL), Image.NEAREST), (2 * PANEL, 0))
    return out


def load_layout(path: str | None, scene: int | None) -> dict:
    if scene is not None:
        return sample_scene(scene_seed("demo", scene)).layout()
    path = path or EXAMPLE_LAYOUT
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--layout: {path!r} not found; pass a toy layout JSON file")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_demo(*, layout: str | None = None, scene: int | None = None, seed: int = 0, weights: str | None = None,
             out: str = "refcomp_toy_demo.png", steps: int = 20, cfg_scale: float = 3.0) -> str:
    """Compose, write the side-by-side PNG, return its path."""
    weights = weights or BUNDLED_WEIGHTS
    doc = load_layout(layout, scene)
    refs = references_from_layout(doc)
    parts = load_parts(weights)
    adapter_path = os.path.join(weights, ADAPTER_FILE)
    if not os.path.isfile(adapter_path):
        raise FileNotFoundError(f"{adapter_path}: no trained toy adapter; run `refcomp toy reproduce --bundle` "
                                "(or pass --weights to a folder that has one)")
    adapter = parts.load_adapter(adapter_path)
    size = int(doc.get("toy", {}).get("size", 64))
    image = generate(parts, [global_caption(doc)], seeds=[seed], config=SampleConfig(steps=steps,
                     cfg_scale=cfg_scale, size=size), adapter=adapter, layouts=[doc], references=[refs])[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    composite(refs, doc, image.permute(1, 2, 0).cpu().numpy()).save(out)
    log.info("wrote %s (references | layout | result)", out)
    return out


def example_scene() -> ToyScene:
    """The scene the bundled example layout was written from."""
    return sample_scene(scene_seed("demo", 1))
