"""Layout helpers behind the canvas, alpha and preview nodes. Pure torch/PIL.

Axis letters: n instances.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from refcomp_core.errors import LayoutError
from refcomp_core.layout import DEPTHS, Layout, parse_layout
from refcomp_core.values import finite_float, show

ALPHA_MODES = ("predicted", "depth labels", "manual overrides")


def empty_layout_json(width: int = 1024, height: int = 1024) -> str:
    return json.dumps({"version": 1, "width": width, "height": height, "instances": []})


def parse_canvas(layout_json: str, width: int, height: int, num_refs: int | None) -> Layout:
    """The canvas's hidden `layout_json` -> validated Layout. An empty string is an empty
    layout of width x height; `num_refs` (None or 0 = unknown) bounds every `ref`."""
    if layout_json is not None and not isinstance(layout_json, str):
        raise LayoutError(f"Layout Canvas: layout_json must be text (layout v1 JSON), got {type(layout_json).__name__}")
    text = (layout_json or "").strip()
    if not text:
        text = empty_layout_json(width, height)
    return parse_layout(text, num_refs=num_refs or None)


OVERRIDE_PAIR = re.compile(r"(\d{1,9})\s*[:=]\s*(\S+)")


def parse_overrides(text: str, n: int) -> dict[int, float]:
    """Manual alpha overrides: a JSON list ([0.9, null, 0.2]) or pairs "index: alpha" separated
    by commas/newlines ("0: 0.9, 2: 0.2"). -> {instance index: alpha}. Raises LayoutError
    naming the pair or list entry for anything else."""
    if text is not None and not isinstance(text, str):
        raise LayoutError(f"alpha overrides: expected text, got {type(text).__name__}; write 'index: alpha' pairs")
    text = (text or "").strip()
    if not text:
        return {}
    items = _override_list(text) if text.startswith("[") else _override_pairs(text)
    out: dict[int, float] = {}
    for i, v in items:
        if not 0 <= i < n:
            have = f"{n} instances (0..{n - 1})" if n else "no instances"
            raise LayoutError(f"alpha overrides: instance {i} does not exist; the layout has {have}")
        alpha = finite_float(v)
        if alpha is None or not 0.0 <= alpha <= 1.0:
            raise LayoutError(f"alpha overrides: instance {i} alpha must be a number in [0, 1], got {show(v)}")
        out[i] = alpha
    return out


def _override_list(text: str) -> list[tuple[int, Any]]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise LayoutError(f"alpha overrides: not a valid JSON list ({err.msg}); write e.g. [0.9, null, 0.2]") from None
    except (ValueError, RecursionError):     # a number with thousands of digits, or deep nesting
        raise LayoutError("alpha overrides: not a list of numbers; write e.g. [0.9, null, 0.2]") from None
    if not isinstance(values, list):
        raise LayoutError("alpha overrides: not a list of numbers; write e.g. [0.9, null, 0.2]")
    return [(i, v) for i, v in enumerate(values) if v is not None]


def _override_pairs(text: str) -> list[tuple[int, Any]]:
    items: list[tuple[int, Any]] = []
    for part in filter(None, (p.strip() for p in re.split(r"[,\n;]", text))):
        m = OVERRIDE_PAIR.fullmatch(part)
        value = _float_or_none(m.group(2)) if m else None
        if value is None:
            raise LayoutError(f"alpha overrides: cannot read {show(part)}; write 'index: alpha' pairs like "
                              "'0: 0.9, 2: 0.2'")
        items.append((int(m.group(1)), value))
    return items


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def set_alphas(layout: Layout, alphas: dict[int, float | None]) -> Layout:
    insts = list(layout.instances)
    for i, a in alphas.items():
        insts[i] = replace(insts[i], alpha=a)
    return replace(layout, instances=tuple(insts))


def depth_alphas(layout: Layout, values: dict[str, float]) -> dict[int, float]:
    """alpha from depth labels for reference boxes without a manual alpha (unlabeled ones stay predicted)."""
    return {i: values[inst.depth] for i, inst in enumerate(layout.instances)
            if inst.ref is not None and inst.alpha is None and inst.depth in values}


def resolved_alphas(layout: Layout, predicted: torch.Tensor | None) -> list[float | None]:
    """alpha per instance as the core would use it: manual > predicted; caption-only 0."""
    out: list[float | None] = []
    for i, inst in enumerate(layout.instances):
        if inst.ref is None:
            out.append(0.0)
        elif inst.alpha is not None:
            out.append(inst.alpha)
        else:
            out.append(float(predicted[i]) if predicted is not None else None)
    return out


_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_preview(image: torch.Tensor, layout: Layout, alphas: list[float | None] | None = None,
                 line: int = 2) -> torch.Tensor:
    """image: (H, W, 3) float [0, 1] -> (H, W, 3) with each box, its index, caption, alpha and FG/BG.

    Boxes are normalized, so any image size works (the layout's aspect is assumed)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape[0], image.shape[1]
    pil = Image.fromarray((image[..., :3].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(pil, "RGBA")
    font = ImageFont.load_default()
    for i, inst in enumerate(layout.instances):
        x0, y0, x1, y1 = inst.box
        box = [x0 * w, y0 * h, max(x0 * w, x1 * w - 1), max(y0 * h, y1 * h - 1)]
        colour = _COLOURS[i % len(_COLOURS)]
        draw.rectangle(box, outline=colour + (255,), width=line)
        a = alphas[i] if alphas is not None and i < len(alphas) else inst.alpha
        role = "cap" if inst.ref is None else ("?" if a is None else ("FG" if a >= 0.5 else "BG"))
        text = f"{i}"
        if inst.ref is not None:
            text += f" ref{inst.ref}"
        text += f" {role}" + (f" a={a:.2f}" if a is not None else "")
        if inst.caption:
            text += f" {inst.caption[:40]}"
        tb = draw.textbbox((box[0] + 2, box[1] + 2), text, font=font)
        draw.rectangle(tb, fill=(0, 0, 0, 160))
        draw.text((box[0] + 2, box[1] + 2), text, fill=colour + (255,), font=font)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)


def blank_canvas(layout: Layout, colour: float = 0.5) -> torch.Tensor:
    """(height, width, 3) grey image of the layout's size."""
    return torch.full((layout.height, layout.width, 3), colour)


def depth_values(fg: float, mg: float, bg: float) -> dict[str, Any]:
    vals = dict(zip(DEPTHS, (fg, mg, bg)))
    for k, v in vals.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"Alpha Predictor: {k}_alpha must be in [0, 1], got {v}")
    return vals
