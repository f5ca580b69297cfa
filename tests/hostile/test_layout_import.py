"""InstanceAssemble / DenseLayout JSON under hostile input: `refcomp.compose.read_layout` (through
`refcomp_core.layout_import`) gives a valid Layout or the pack's LayoutError naming the place, on one
line, for every document: generated valid ones, one field made hostile, broken bytes, any file."""
from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from hostile_strategies import accepted_or_ours, hostile_values, json_values
from refcomp.compose import read_layout
from refcomp_core import Layout, LayoutError
from refcomp_core.limits import MAX_CAPTION_CHARS, MAX_SIDE_PX

BASE = {"prompt": "a cat on a chair", "width": 512, "height": 384, "seed": 7,
        "annos": [{"bbox": [10, 20, 200, 300], "category_name": "cat", "caption": "a tabby cat"},
                  {"bbox": [100, 50, 600, 400], "category_name": "chair", "caption": ""}]}


@st.composite
def ia_documents(draw) -> dict:
    """A valid InstanceAssemble document: pixel xyxy boxes of at least 16 px inside (or past) the canvas."""
    width, height = draw(st.integers(16, 2048)), draw(st.integers(16, 2048))
    annos = []
    for _ in range(draw(st.integers(0, 6))):
        x1 = draw(st.floats(0, width - 16))
        y1 = draw(st.floats(0, height - 16))
        x2 = draw(st.floats(x1 + 16, width * 1.2))
        y2 = draw(st.floats(y1 + 16, height * 1.2))
        as_int = draw(st.booleans())
        bbox = [int(x1), int(y1), math.ceil(x2) + 1, math.ceil(y2) + 1] if as_int else [x1, y1, x2, y2]
        annos.append({"bbox": bbox, "category_name": draw(st.sampled_from(["cat", "chair", "", "tree"])),
                      "caption": draw(st.none() | st.text(max_size=30))})
    doc = {"width": width, "height": height, "annos": annos}
    if draw(st.booleans()):
        doc["prompt"] = draw(st.text(max_size=40))
    if draw(st.booleans()):
        doc["seed"] = draw(st.integers(0, 2 ** 32))
    return doc


def read(source):
    """The only outcomes: a Layout whose boxes are inside [0, 1], or a LayoutError on one line."""
    out = accepted_or_ours(lambda: read_layout(source, num_refs=0), LayoutError, ("layout", "InstanceAssemble"))
    if isinstance(out, Layout):
        json.dumps(out.to_dict(), allow_nan=False)
        assert 16 <= out.width <= MAX_SIDE_PX and 16 <= out.height <= MAX_SIDE_PX
        for inst in out.instances:
            assert all(0.0 <= v <= 1.0 for v in inst.box) and inst.box[0] < inst.box[2] and inst.box[1] < inst.box[3]
            assert inst.ref is None and (inst.caption is None or len(inst.caption) <= MAX_CAPTION_CHARS)
        assert out.extra.get("prompt") is None or isinstance(out.extra["prompt"], str)
    return out


# --- the first three escaped before the fix (found by the properties below); the others are kept ---
@pytest.mark.parametrize("change, place", [
    (lambda d: d.update(width=10 ** 400), "InstanceAssemble layout: width"),                  # OverflowError
    (lambda d: d["annos"][0].update(bbox=[0, 0, 10 ** 400, 20]), "annos[0].bbox"),           # OverflowError
    (lambda d: d.update(prompt=["a", "list"]), "InstanceAssemble layout: prompt"),           # became str(list)
    (lambda d: d["annos"][1].update(bbox=[1e308, 0, 1.7e308, 20]), "layout.instances[1].box"),
    (lambda d: d["annos"][0].update(caption="x\ud800"), "layout.instances[0].caption"),
])
def test_found_examples_name_the_place(change, place):
    doc = copy.deepcopy(BASE)
    change(doc)
    with pytest.raises(LayoutError) as err:
        read_layout(doc, num_refs=0)
    assert place in str(err.value) and "\n" not in str(err.value)


def test_a_valid_document_imports_in_order():
    layout = read(copy.deepcopy(BASE))
    assert [i.caption for i in layout.instances] == ["cat, a tabby cat", "chair"]
    assert layout.instances[1].box == (100 / 512, 50 / 384, 1.0, 1.0)
    assert layout.extra == {"prompt": "a cat on a chair"}                   # other keys (seed) are dropped


# --- properties ---------------------------------------------------------------------------------
@given(ia_documents())
def test_valid_documents_import(doc):
    layout = read(doc)
    assert isinstance(layout, Layout) and len(layout) == len(doc["annos"]) and layout.width == doc["width"]
    for inst, anno in zip(layout.instances, doc["annos"]):
        parts = [p for p in (anno["category_name"], anno["caption"]) if p and p.strip()]
        assert inst.caption == (", ".join(parts).strip() or None)          # parse_layout strips a caption
    for source in (json.dumps(doc), json.dumps(doc).encode("utf-8")):
        assert read(source) == layout


TOP = ("width", "height", "annos", "prompt", "seed", "unknown")
ANNO = ("bbox", "category_name", "caption", "unknown")


@given(ia_documents(), st.data())
def test_one_hostile_field(doc, data):
    """Any value in one field: a Layout or a LayoutError naming the field (or, for a value that makes a
    box too small or too many, the instance)."""
    doc = copy.deepcopy(doc)
    hostile = data.draw(hostile_values, label="value")
    if doc["annos"] and data.draw(st.booleans(), label="in an anno"):
        index = data.draw(st.integers(0, len(doc["annos"]) - 1), label="index")
        field = data.draw(st.sampled_from(ANNO), label="field")
        doc["annos"][index][field] = hostile
        places = (f"annos[{index}]", f"layout.instances[{index}]", "layout: an unknown key")
    else:
        field = data.draw(st.sampled_from(TOP), label="field")
        doc[field] = hostile
        places = (f"layout: {field}", f"layout.{field}", "annos", "layout.instances", "layout:")
    note(f"expect one of {places}")
    out = read(doc)
    if isinstance(out, LayoutError):
        assert any(p in str(out) for p in places), str(out)


@given(ia_documents(), st.integers(0, 10 ** 6), st.integers(0, 255))
def test_flipped_bytes(doc, position, byte):
    data = bytearray(json.dumps(doc).encode("utf-8"))
    data[position % len(data)] = byte
    read(bytes(data))


@given(st.dictionaries(st.sampled_from(["annos", "width", "height", "prompt", "bbox"]), json_values, max_size=5))
def test_any_object_with_annos(doc):
    doc.setdefault("annos", [])
    read(doc)


@given(ia_documents(), st.integers(0, 400))
def test_truncated_files(tmp_path_factory, doc, cut):
    path = tmp_path_factory.getbasetemp() / "ia_layout.json"
    text = json.dumps(doc).encode("utf-8")
    path.write_bytes(text[:max(0, len(text) - cut)])
    out = read(path)
    if isinstance(out, LayoutError):
        assert str(path) in str(out)
