"""Other layout formats -> layout v1 (validated by `parse_layout` afterwards).

InstanceAssemble / DenseLayout JSON:
    {"prompt": "...", "width": W, "height": H, "seed": 42,
     "annos": [{"bbox": [x1, y1, x2, y2] (pixels), "category_name": "chair", "caption": "a big red chair"}]}
maps to one instance per anno, in order: box = bbox / (W, H) clamped to [0, 1], caption =
"category, caption" (InstanceAssemble's own instance text; just one of them when the other is
empty), ref / depth / alpha null. `prompt` stays as an extra key of the layout; other keys (`seed`)
are dropped. The canvas (web/layout_codec.js) applies the same rule (tests/fixtures/instanceassemble).
Every value is checked (`finite_float`; the prompt must be text here), so a hostile document gives a
LayoutError naming the field, never a raw Python exception.
"""
from __future__ import annotations

from typing import Any

from .errors import LayoutError
from .values import finite_float, show


def is_instanceassemble(doc: Any) -> bool:
    return isinstance(doc, dict) and "annos" in doc and "version" not in doc


def from_instanceassemble(doc: dict[str, Any]) -> dict[str, Any]:
    """An InstanceAssemble / DenseLayout document as a layout v1 dict (not yet validated)."""
    width, height = (_size(doc, k) for k in ("width", "height"))
    annos = doc.get("annos")
    if not isinstance(annos, list):
        raise LayoutError(f"InstanceAssemble layout: annos must be a list, got {type(annos).__name__}")
    instances = []
    for i, anno in enumerate(annos):
        where = f"InstanceAssemble layout: annos[{i}]"
        if not isinstance(anno, dict):
            raise LayoutError(f"{where}: expected an object, got {type(anno).__name__}")
        bbox = anno.get("bbox")
        values = [finite_float(v) for v in bbox] if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else [None]
        if any(v is None for v in values):
            raise LayoutError(f"{where}.bbox: expected [x1, y1, x2, y2] in pixels (4 finite numbers), got {show(bbox)}")
        x1, y1, x2, y2 = values
        if not (x2 > x1 and y2 > y1):
            raise LayoutError(f"{where}.bbox: empty box {show(list(bbox))}; need x2 > x1 and y2 > y1 (pixel xyxy)")
        box = [min(1.0, max(0.0, v / s)) for v, s in ((x1, width), (y1, height), (x2, width), (y2, height))]
        instances.append({"box": box, "ref": None, "caption": _text(anno, where), "depth": None, "alpha": None})
    prompt = doc.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise LayoutError(f"InstanceAssemble layout: prompt must be text (or absent), got {show(prompt)}")
    extra = {"prompt": prompt} if "prompt" in doc else {}
    return {**extra, "version": 1, "width": width, "height": height, "instances": instances}


def _size(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    number = finite_float(value)
    if number is None or number != int(number) or number <= 0:
        raise LayoutError(f"InstanceAssemble layout: {key} must be a positive integer number of pixels, got "
                          f"{show(value)}")
    return int(number)


def _text(anno: dict[str, Any], where: str) -> str | None:
    parts = []
    for key in ("category_name", "caption"):
        value = anno.get(key)
        if value is not None and not isinstance(value, str):
            raise LayoutError(f"{where}.{key}: expected a string, got {type(value).__name__}")
        if value and value.strip():
            parts.append(value)
    return ", ".join(parts) or None
