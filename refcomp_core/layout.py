"""Layout v1: the one JSON format for boxes, used by the canvas, workflows, the
training manifest and the CLI. Validation lives here and only here.

    {"version": 1, "width": 1024, "height": 1024,
     "instances": [{"box": [x0, y0, x1, y1], "ref": 0, "caption": "...",
                    "depth": "fg", "alpha": null}]}
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from .errors import LayoutError

LAYOUT_VERSION = 1
TOKEN_PX = 16
DEPTHS: tuple[str, ...] = ("fg", "mg", "bg")
Depth = Literal["fg", "mg", "bg"]
RefKind = Literal["index", "path"]

# Older/newer documents are upgraded to v1 here, one step at a time. None yet.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class Instance:
    """One box. `box` is normalized `(x0, y0, x1, y1)`; `ref` an index (or a crop path
    in a training manifest) or None for caption-only."""

    box: tuple[float, float, float, float]
    ref: int | str | None = None
    caption: str | None = None
    depth: Depth | None = None
    alpha: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "box": list(self.box), "ref": self.ref, "caption": self.caption,
                "depth": self.depth, "alpha": self.alpha}


@dataclass(frozen=True)
class Layout:
    """A validated layout v1 document."""

    width: int
    height: int
    instances: tuple[Instance, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def referenced(self) -> list[int]:
        """Sorted distinct reference indices used by the instances."""
        return sorted({i.ref for i in self.instances if isinstance(i.ref, int)})

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "version": LAYOUT_VERSION, "width": self.width, "height": self.height,
                "instances": [i.to_dict() for i in self.instances]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


LayoutSource = Union[str, bytes, dict, Layout]


def parse_layout(source: LayoutSource, *, num_refs: int | None = None, max_instances: int = 50,
                 ref_kind: RefKind = "index") -> Layout:
    """Parse and validate a layout v1 document (JSON text, dict, or `Layout`).

    `num_refs`, when given, is the size of the reference set: every integer `ref`
    must be below it. Raises `LayoutError` naming the instance index and field.
    """
    if isinstance(source, Layout):
        source = source.to_dict()
    if isinstance(source, (str, bytes)):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as err:
            raise LayoutError(f"layout: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                              "pass a layout v1 JSON object") from None
    if not isinstance(source, dict):
        raise LayoutError(f"layout: expected a JSON object, got {type(source).__name__}")
    doc = _migrate(dict(source))
    width = _dimension(doc, "width")
    height = _dimension(doc, "height")
    raw = doc.get("instances", [])
    if not isinstance(raw, list):
        raise LayoutError(f"layout.instances: expected a list, got {type(raw).__name__}")
    if len(raw) > max_instances:
        raise LayoutError(f"layout.instances: {len(raw)} instances, more than max_instances={max_instances}; "
                          "remove boxes or raise max_instances")
    instances = tuple(_instance(i, item, width, height, num_refs, ref_kind) for i, item in enumerate(raw))
    extra = {k: v for k, v in doc.items() if k not in ("version", "width", "height", "instances")}
    return Layout(width=width, height=height, instances=instances, extra=extra)


def _migrate(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise LayoutError(f"layout.version: expected an integer version (1), got {version!r}")
    while version != LAYOUT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise LayoutError(f"layout.version: unknown layout version {version}; this RefComp reads version "
                              f"{LAYOUT_VERSION} (upgrade RefComp for newer layouts)")
        doc = step(doc)
        version = doc["version"]
    return doc


def _dimension(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value < TOKEN_PX:
        raise LayoutError(f"layout.{key}: expected an integer number of pixels >= {TOKEN_PX}, got {value!r}")
    return int(value)


def _instance(index: int, item: Any, width: int, height: int, num_refs: int | None, ref_kind: RefKind) -> Instance:
    where = f"layout.instances[{index}]"
    if not isinstance(item, dict):
        raise LayoutError(f"{where}: expected an object, got {type(item).__name__}")
    box = _box(where, item.get("box"), width, height)
    ref = _ref(where, item.get("ref"), num_refs, ref_kind)
    caption = item.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise LayoutError(f"{where}.caption: expected a string or null, got {type(caption).__name__}")
    caption = caption.strip() or None if caption is not None else None
    depth = item.get("depth")
    if depth is not None and depth not in DEPTHS:
        raise LayoutError(f"{where}.depth: unknown depth {depth!r}; use one of 'fg', 'mg', 'bg' or null")
    alpha = item.get("alpha")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
                or not 0.0 <= alpha <= 1.0:
            raise LayoutError(f"{where}.alpha: expected a number in [0, 1] or null, got {alpha!r}")
        alpha = float(alpha)
    extra = {k: v for k, v in item.items() if k not in ("box", "ref", "caption", "depth", "alpha")}
    return Instance(box=box, ref=ref, caption=caption, depth=depth, alpha=alpha, extra=extra)


def _box(where: str, box: Any, width: int, height: int) -> tuple[float, float, float, float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise LayoutError(f"{where}.box: expected [x0, y0, x1, y1], got {box!r}")
    values = []
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LayoutError(f"{where}.box: coordinates must be finite numbers, got {box!r}")
        if not 0.0 <= v <= 1.0:
            raise LayoutError(f"{where}.box: coordinates are normalized to [0, 1], got {box!r}; "
                              "divide pixel coordinates by the image width/height")
        values.append(float(v))
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise LayoutError(f"{where}.box: empty box {box!r}; need x0 < x1 and y0 < y1")
    if (x1 - x0) * width < TOKEN_PX - 1e-6 or (y1 - y0) * height < TOKEN_PX - 1e-6:
        raise LayoutError(f"{where}.box: box is {(x1 - x0) * width:.1f}x{(y1 - y0) * height:.1f} px, under one "
                          f"{TOKEN_PX}x{TOKEN_PX} px token of a {width}x{height} image; make it larger")
    return x0, y0, x1, y1


def _ref(where: str, ref: Any, num_refs: int | None, ref_kind: RefKind) -> int | str | None:
    if ref is None:
        return None
    if ref_kind == "path":
        if not isinstance(ref, str) or not ref:
            raise LayoutError(f"{where}.ref: expected a crop path (string) or null in a training manifest, "
                              f"got {ref!r}")
        return ref
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise LayoutError(f"{where}.ref: expected a reference index (integer) or null, got {ref!r}")
    if ref < 0 or (num_refs is not None and ref >= num_refs):
        limit = f"0..{num_refs - 1}" if num_refs else "none (the reference set is empty)"
        raise LayoutError(f"{where}.ref: reference index {ref} is out of range; valid indices: {limit}")
    return ref
