"""Layout v1: the one JSON format for boxes, used by the canvas, workflows, the
training manifest and the CLI. Validation lives here and only here.

    {"version": 1, "width": 1024, "height": 1024,
     "instances": [{"box": [x0, y0, x1, y1], "ref": 0, "caption": "...",
                    "depth": "fg", "alpha": null}]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from .errors import LayoutError
from .limits import MAX_CAPTION_CHARS, MAX_INSTANCES, MAX_JSON_DEPTH, MAX_SIDE_PX, MIN_SIDE_PX
from .values import finite_float, json_problem, show, valid_unicode

LAYOUT_VERSION = 1
TOKEN_PX = MIN_SIDE_PX
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


def parse_layout(source: LayoutSource, *, num_refs: int | None = None, max_instances: int = MAX_INSTANCES,
                 ref_kind: RefKind = "index") -> Layout:
    """Parse and validate a layout v1 document (JSON text, UTF-8 bytes, dict, or `Layout`).

    `num_refs`, when given, is the size of the reference set: every integer `ref`
    must be below it. Raises `LayoutError` naming the instance index and field; any
    other input (wrong types, huge numbers, deep nesting, broken text) raises it too.
    Limits (refcomp_core.limits): `max_instances` boxes, sides up to MAX_SIDE_PX,
    captions up to MAX_CAPTION_CHARS characters.
    """
    if isinstance(source, Layout):
        source = source.to_dict()
    if isinstance(source, (bytes, bytearray)):
        source = _decode(bytes(source))
    if isinstance(source, str):
        source = _load_json(source)
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
    extra = _extra("layout", doc, ("version", "width", "height", "instances"))
    return Layout(width=width, height=height, instances=instances, extra=extra)


def _decode(data: bytes) -> str:
    try:
        return data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as err:
        raise LayoutError(f"layout: the text is not valid {err.encoding.upper()} (bad byte at position "
                          f"{err.start}); save the layout as UTF-8 JSON") from None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as err:
        raise LayoutError(f"layout: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                          "pass a layout v1 JSON object") from None
    except RecursionError:
        raise LayoutError("layout: the JSON is nested too deeply to read; a layout v1 document is a flat object "
                          "of instances") from None
    except ValueError:          # an integer literal beyond Python's digit limit
        raise LayoutError("layout: the JSON holds a number with thousands of digits; box coordinates are in "
                          "[0, 1] and sizes in pixels") from None


def _extra(where: str, item: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The unknown keys of `item`, kept as they are when they are plain JSON."""
    extra = {k: v for k, v in item.items() if k not in known}
    problem = json_problem(extra, MAX_JSON_DEPTH)
    if problem:
        keys = ", ".join(show(k) for k in list(extra)[:5])
        raise LayoutError(f"{where}: an unknown key ({keys}) {problem}; unknown keys are kept, so they must hold "
                          "plain JSON values (remove the key or fix its value)")
    return extra


def _migrate(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise LayoutError(f"layout.version: expected an integer version (1), got {show(version)}")
    while version != LAYOUT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise LayoutError(f"layout.version: unknown layout version {show(version)}; this RefComp reads version "
                              f"{LAYOUT_VERSION} (upgrade RefComp for newer layouts)")
        doc = step(doc)
        version = doc["version"]
    return doc


def _dimension(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    number = finite_float(value)
    if number is None or number != int(number) or not MIN_SIDE_PX <= number <= MAX_SIDE_PX:
        raise LayoutError(f"layout.{key}: expected an integer number of pixels in [{MIN_SIDE_PX}, {MAX_SIDE_PX}], "
                          f"got {show(value)}; RefComp composes images up to {MAX_SIDE_PX} px per side")
    return int(number)


def _instance(index: int, item: Any, width: int, height: int, num_refs: int | None, ref_kind: RefKind) -> Instance:
    where = f"layout.instances[{index}]"
    if not isinstance(item, dict):
        raise LayoutError(f"{where}: expected an object, got {type(item).__name__}")
    box = _box(where, item.get("box"), width, height)
    ref = _ref(where, item.get("ref"), num_refs, ref_kind)
    caption = _caption(where, item.get("caption"))
    depth = item.get("depth")
    if depth is not None and not (isinstance(depth, str) and depth in DEPTHS):
        raise LayoutError(f"{where}.depth: unknown depth {show(depth)}; use one of 'fg', 'mg', 'bg' or null")
    alpha = item.get("alpha")
    if alpha is not None:
        alpha = finite_float(alpha)
        if alpha is None or not 0.0 <= alpha <= 1.0:
            raise LayoutError(f"{where}.alpha: expected a number in [0, 1] or null, got {show(item.get('alpha'))}")
    extra = _extra(where, item, ("box", "ref", "caption", "depth", "alpha"))
    return Instance(box=box, ref=ref, caption=caption, depth=depth, alpha=alpha, extra=extra)


def _caption(where: str, caption: Any) -> str | None:
    if caption is None:
        return None
    if not isinstance(caption, str):
        raise LayoutError(f"{where}.caption: expected a string or null, got {type(caption).__name__}")
    if not valid_unicode(caption):
        raise LayoutError(f"{where}.caption: the text is not valid Unicode (it holds a lone surrogate); retype it")
    caption = caption.strip()
    if len(caption) > MAX_CAPTION_CHARS:
        raise LayoutError(f"{where}.caption: {len(caption)} characters, more than the {MAX_CAPTION_CHARS}-character "
                          "limit; shorten it (CLIP-L reads only its first 77 tokens)")
    return caption or None


def _box(where: str, box: Any, width: int, height: int) -> tuple[float, float, float, float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise LayoutError(f"{where}.box: expected [x0, y0, x1, y1], got {show(box)}")
    values = []
    for v in box:
        number = finite_float(v)
        if number is None:
            raise LayoutError(f"{where}.box: coordinates must be finite numbers, got {show(box)}")
        if not 0.0 <= number <= 1.0:
            raise LayoutError(f"{where}.box: coordinates are normalized to [0, 1], got {show(box)}; "
                              "divide pixel coordinates by the image width/height")
        values.append(number)
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise LayoutError(f"{where}.box: empty box {show(box)}; need x0 < x1 and y0 < y1")
    if (x1 - x0) * width < TOKEN_PX - 1e-6 or (y1 - y0) * height < TOKEN_PX - 1e-6:
        raise LayoutError(f"{where}.box: box is {(x1 - x0) * width:.1f}x{(y1 - y0) * height:.1f} px, under one "
                          f"{TOKEN_PX}x{TOKEN_PX} px token of a {width}x{height} image; make it larger")
    return x0, y0, x1, y1


def _ref(where: str, ref: Any, num_refs: int | None, ref_kind: RefKind) -> int | str | None:
    if ref is None:
        return None
    if ref_kind == "path":
        if not isinstance(ref, str) or not ref or "\x00" in ref or not valid_unicode(ref):
            raise LayoutError(f"{where}.ref: expected a crop path (string) or null in a training manifest, "
                              f"got {show(ref)}")
        return ref
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise LayoutError(f"{where}.ref: expected a reference index (integer) or null, got {show(ref)}")
    if ref < 0 or (num_refs is not None and ref >= num_refs):
        limit = f"0..{num_refs - 1}" if num_refs else "none (the reference set is empty)"
        raise LayoutError(f"{where}.ref: reference index {show(ref)} is out of range; valid indices: {limit}")
    return ref
