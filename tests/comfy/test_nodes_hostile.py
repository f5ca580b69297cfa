"""Node-pack parsers and loaders under hostile input (issue 12), without ComfyUI: the
canvas JSON, the alpha overrides and the reference folder raise the pack's own errors
(which ComfyUI shows as the node's error), never a raw Python or PIL exception."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from hostile_strategies import EDGE_NUMBERS, EDGE_TEXT, accepted_or_ours, json_values, png_declaring, texts
from refcomp_core import Layout, LayoutError
from refcomp_core.errors import ReferenceImageError
from refcomp_pack.nodes import layout_tools, references

LAYOUT = {"version": 1, "width": 256, "height": 256,
          "instances": [{"box": [0.0, 0.0, 0.5, 0.5], "ref": None, "caption": "a cat"}]}


# --- the examples, each one escaped before the fix ---------------------------------------
@pytest.mark.parametrize("text", ["0: 1.2.3", "0: --1", "0: 1e5e5", "1" * 5000 + ": 0.5", "[" + "9" * 5000 + "]",
                                  "[" * 100000, "[1] trailing", "0: 0.5 0.6"])
def test_override_strings_raise_layout_error(text):
    with pytest.raises(LayoutError, match="^alpha overrides: "):          # was a bare ValueError
        layout_tools.parse_overrides(text, 3)


@pytest.mark.parametrize("value", [7, 0.5, ["0: 0.5"], b"0: 0.5"])
def test_overrides_that_are_not_text(value):
    with pytest.raises(LayoutError, match="^alpha overrides: expected text"):     # was AttributeError
        layout_tools.parse_overrides(value, 3)


@pytest.mark.parametrize("value", [7, ["{}"], {"version": 1}])
def test_canvas_json_that_is_not_text(value):
    with pytest.raises(LayoutError, match="^Layout Canvas: layout_json must be text"):   # was AttributeError
        layout_tools.parse_canvas(value, 64, 64, None)


def test_overrides_still_read_both_forms():
    assert layout_tools.parse_overrides("0: 0.9, 2=0.25\n1: 1", 3) == {0: 0.9, 2: 0.25, 1: 1.0}
    assert layout_tools.parse_overrides("[0.9, null, 0]", 3) == {0: 0.9, 2: 0.0}
    with pytest.raises(LayoutError, match="the layout has no instances"):
        layout_tools.parse_overrides("0: 0.5", 0)


@pytest.mark.parametrize("name, data, message", [
    ("bomb.png", png_declaring(30000, 30000), "declares more pixels"),     # was DecompressionBombError
    ("big.png", png_declaring(9000, 9000), "is 9000x9000 px"),
    ("broken.png", b"\x89PNG\r\n\x1a\nbroken", "cannot read the image"),   # was a raw PIL error
    ("empty.jpg", b"", "cannot read the image"),
])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_reference_folder_images_name_the_file(tmp_path, name, data, message):
    Image.new("RGB", (4, 4)).save(tmp_path / "a_ok.png")
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ReferenceImageError) as err:
        references.from_folder(str(tmp_path))
    text = str(err.value)
    assert text.startswith("Load Reference Set: ") and str(tmp_path / name) in text and message in text
    assert "\n" not in text


# --- properties ---------------------------------------------------------------------------------
@given(st.one_of(texts, st.text(alphabet="0123456789:=,;.eE+- \n[]null", max_size=30),
                 st.builds(json.dumps, json_values)), st.integers(0, 5))
def test_overrides_from_any_text(text, n):
    out = accepted_or_ours(lambda: layout_tools.parse_overrides(text, n), LayoutError, "alpha overrides: ")
    if isinstance(out, dict):
        assert all(isinstance(i, int) and 0 <= i < n for i in out)
        assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in out.values())


@given(st.lists(st.tuples(st.integers(-3, 10 ** 12), st.one_of(st.sampled_from(EDGE_NUMBERS), st.floats())),
                max_size=4), st.booleans())
def test_overrides_from_numbers_at_the_limits(pairs, as_list):
    if as_list:
        values = [None] * 4
        for i, v in pairs:
            if 0 <= i < 4:
                values[i] = v
        text = json.dumps(values)
    else:
        text = ", ".join(f"{i}: {v}" for i, v in pairs)
    accepted_or_ours(lambda: layout_tools.parse_overrides(text, 4), LayoutError, "alpha overrides: ")


@given(st.one_of(texts, st.builds(json.dumps, json_values), st.sampled_from(EDGE_TEXT),
                 st.builds(lambda v: json.dumps({**LAYOUT, "note": v}), json_values)),
       st.sampled_from([16, 1024, 8192, 10 ** 6]), st.sampled_from([None, 0, 1, 3]))
def test_canvas_from_any_text(text, side, num_refs):
    out = accepted_or_ours(lambda: layout_tools.parse_canvas(text, side, side, num_refs), LayoutError, "layout")
    if isinstance(out, Layout):
        assert out.width <= 8192 and out.height <= 8192


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("node_images")


@given(st.sampled_from(["PNG", "JPEG", "WEBP"]), st.data())
def test_node_image_loader_on_damaged_files(image_folder, fmt, data):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 4), dtype=np.uint8), "RGBA") \
        .convert("RGBA" if fmt != "JPEG" else "RGB").save(buf, format=fmt)
    raw = bytearray(buf.getvalue())
    for at, byte in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=5),
                              label="flips"):
        raw[at] = byte
    cut = data.draw(st.integers(0, len(raw)), label="length")
    path = image_folder / f"ref.{fmt.lower()}"
    path.write_bytes(bytes(raw[:cut]))
    out = accepted_or_ours(lambda: references.load_image(str(path)), ReferenceImageError, str(path))
    if isinstance(out, torch.Tensor):
        assert out.ndim == 3 and out.shape[-1] == 3 and bool(((out >= 0) & (out <= 1)).all())
