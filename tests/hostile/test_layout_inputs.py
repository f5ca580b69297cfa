"""Layout JSON under hostile input (issue 12): every input gives a valid Layout or a
LayoutError naming the place, on one line. The examples are the ones the issue found
escaping as raw Python exceptions or accepted silently."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from hostile_strategies import (accepted_or_ours, hostile_values, json_values, long_number_literals, nested, texts,
                                valid_layouts)
from refcomp_core import Layout, LayoutError, parse_layout
from refcomp_core.limits import MAX_CAPTION_CHARS, MAX_SIDE_PX

BASE = {"version": 1, "width": 256, "height": 256,
        "instances": [{"box": [0.1, 0.1, 0.5, 0.5], "ref": None, "caption": "a cat"}]}


def with_instance(**fields) -> dict:
    doc = copy.deepcopy(BASE)
    doc["instances"][0].update(fields)
    return doc


# --- the issue's examples, each one escaped before the fix ---------------------------------------
@pytest.mark.parametrize("source, place", [
    (with_instance(box=[10 ** 400, 0.1, 0.5, 0.5]), "layout.instances[0].box"),        # OverflowError
    ({**BASE, "width": 10 ** 400}, "layout.width"),                                     # OverflowError
    (with_instance(alpha=-(10 ** 400)), "layout.instances[0].alpha"),                   # OverflowError
    ('{"version": 1, "width": ' + "1" * 5000 + ', "height": 64}', "layout:"),          # int() digit limit
    ({**BASE, "version": 10 ** 5000}, "layout.version"),                               # repr digit limit
    ('{"version": 1, "width": 64, "height": 64, "x": ' + "[" * 100000 + "]" * 100000 + "}", "layout:"),  # Recursion
    (b'{"version": 1, "width": 64, "height": 64, "note": "\xff"}', "layout:"),         # UnicodeDecodeError
    (b'{"version": 1, "width": 64, "height": 64, "note": "\xed\xa0\x80"}', "layout:"),  # UTF-8-encoded surrogate
    ({**BASE, "width": 10 ** 7, "height": 10 ** 7}, "layout.width"),                   # accepted, then OOM
    (with_instance(caption="a\ud800 cat"), "layout.instances[0].caption"),             # accepted, then TypeError
    (with_instance(caption="x" * (MAX_CAPTION_CHARS + 1)), "layout.instances[0].caption"),
    (with_instance(note=float("nan")), "layout.instances[0]:"),                        # to_json wrote NaN
    ({**BASE, "note": nested(200)}, "layout:"),                                        # to_json: RecursionError
    ({**BASE, "note": {1: "x"}}, "layout:"),                                           # non-string key
    ({**BASE, "note": {1, 2}}, "layout:"),                                             # to_json: TypeError
    (with_instance(depth=["fg"]), "layout.instances[0].depth"),
])
def test_issue_examples_raise_layout_error_naming_the_place(source, place):
    with pytest.raises(LayoutError) as err:
        parse_layout(source)
    assert place in str(err.value) and "\n" not in str(err.value)


def test_canvas_size_limit_is_inclusive():
    layout = parse_layout({**BASE, "width": MAX_SIDE_PX, "height": MAX_SIDE_PX})
    assert (layout.width, layout.height) == (MAX_SIDE_PX, MAX_SIDE_PX)
    with pytest.raises(LayoutError, match=f"in \\[16, {MAX_SIDE_PX}\\]"):
        parse_layout({**BASE, "height": MAX_SIDE_PX + 16})


def test_caption_limit_and_utf16_text_still_read():
    caption = "y" * MAX_CAPTION_CHARS
    assert parse_layout(with_instance(caption=caption)).instances[0].caption == caption
    text = json.dumps(with_instance(caption="un chat \u00e9t\u00e9"))
    for encoded in (text.encode("utf-8"), text.encode("utf-8-sig"), text.encode("utf-16")):
        assert parse_layout(encoded).instances[0].caption == "un chat \u00e9t\u00e9"


def test_a_self_referencing_dict_is_refused():
    doc = copy.deepcopy(BASE)
    doc["loop"] = doc
    with pytest.raises(LayoutError, match="unknown key"):
        parse_layout(doc)


# --- properties ---------------------------------------------------------------------------------
def check_layout(source, **kwargs):
    """The only outcomes: a Layout that round-trips through strict JSON, or a LayoutError."""
    out = accepted_or_ours(lambda: parse_layout(source, **kwargs), LayoutError, "layout")
    if isinstance(out, Layout):
        strict = json.dumps(out.to_dict(), allow_nan=False)          # plain JSON, no NaN
        assert parse_layout(strict, **kwargs) == out
        assert 16 <= out.width <= MAX_SIDE_PX and 16 <= out.height <= MAX_SIDE_PX
        for inst in out.instances:
            assert all(0.0 <= v <= 1.0 for v in inst.box)
            assert inst.caption is None or len(inst.caption) <= MAX_CAPTION_CHARS
            inst.caption and inst.caption.encode("utf-8")
    return out


@given(json_values)
def test_any_json_value(value):
    check_layout(value)
    text = json.dumps(value)
    check_layout(text)
    check_layout(text.encode("utf-8"))


@given(st.one_of(texts, st.text()))
def test_any_text(text):
    check_layout(text)


@given(st.binary(max_size=200))
def test_any_bytes(data):
    check_layout(data)


@given(valid_layouts())
def test_valid_layouts_are_accepted(doc):
    layout = check_layout(doc, num_refs=3)
    assert isinstance(layout, Layout) and len(layout) == len(doc["instances"])


INSTANCE_FIELDS = ("box", "ref", "caption", "depth", "alpha", "unknown")
TOP_FIELDS = ("version", "width", "height", "instances", "unknown")


@given(valid_layouts(), st.data())
def test_one_hostile_field_is_named(doc, data):
    """Replace one field of a valid layout with anything: the error names that field."""
    doc = copy.deepcopy(doc)
    hostile = data.draw(hostile_values, label="value")
    if doc["instances"] and data.draw(st.booleans(), label="in an instance"):
        index = data.draw(st.integers(0, len(doc["instances"]) - 1), label="index")
        field = data.draw(st.sampled_from(INSTANCE_FIELDS), label="field")
        doc["instances"][index][field] = hostile
        place = f"layout.instances[{index}]" + (":" if field == "unknown" else f".{field}")
        places = (place,)
    else:
        field = data.draw(st.sampled_from(TOP_FIELDS), label="field")
        doc[field] = hostile
        place = "layout:" if field == "unknown" else f"layout.{field}"
        # a smaller canvas can make a valid box smaller than one token: then the box is named
        places = (place, "layout.instances[") if field in ("width", "height", "instances") else (place,)
    note(f"expect {places}")
    check_layout(doc, num_refs=3)
    accepted_or_ours(lambda: parse_layout(doc, num_refs=3), LayoutError, places)


@given(valid_layouts(), st.integers(0, 10 ** 6), st.integers(0, 255))
def test_flipped_bytes(doc, position, byte):
    data = bytearray(json.dumps(doc).encode("utf-8"))
    data[position % len(data)] = byte
    check_layout(bytes(data), num_refs=3)


@given(valid_layouts(), long_number_literals, st.sampled_from(["width", "height", "version", "box", "alpha", "ref"]))
def test_long_number_literals(doc, literal, field):
    marker = "123456.5"
    if field in ("width", "height", "version") or not doc["instances"]:
        doc[field if field in ("width", "height", "version") else "width"] = float(marker)
    else:
        doc["instances"][0][field] = float(marker) if field != "box" else [float(marker)] * 4
    check_layout(json.dumps(doc).replace(marker, literal), num_refs=3)


@given(st.integers(1, 5000), st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting_in_text(depth, opener):
    closer = "]" if opener == "[" else "}"
    text = '{"version": 1, "width": 64, "height": 64, "deep": ' + opener * depth + "1" + closer * depth + "}"
    check_layout(text)
