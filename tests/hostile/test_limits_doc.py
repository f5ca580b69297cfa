"""docs/limits.md states the limits of refcomp_core/limits.py and quotes the messages the
code gives today: each example below is produced by the code and must appear verbatim."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostile_strategies import png_declaring
from refcomp.compose import ComposeOptions
from refcomp.refs import read_reference
from refcomp.xverse_inputs import check_identity_boxes
from refcomp_core import RefCompConfig, parse_layout
from refcomp_core.errors import RefCompError
from refcomp_core.limits import (MAX_CAPTION_CHARS, MAX_FILE_BLOCKS, MAX_FILE_DIM, MAX_IMAGE_PIXELS, MAX_INSTANCES,
                                 MAX_SIDE_PX, MAX_STEPS)
from refcomp_core.xverse.identity import MAX_IDENTITY_REFS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "limits.md").read_text(encoding="utf-8")
README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
BASE = {"version": 1, "width": 1024, "height": 1024, "instances": []}
BOX = {"box": [0.1, 0.1, 0.5, 0.5], "ref": None, "caption": "a cat"}


def message(fn) -> str:
    with pytest.raises(RefCompError) as err:
        fn()
    return str(err.value)


def test_the_page_states_the_constants_and_is_linked():
    assert f"| {MAX_INSTANCES} (`max_instances`)" in DOC
    assert f"16 to {MAX_SIDE_PX} px" in DOC
    assert f"{MAX_CAPTION_CHARS} characters per box" in DOC
    assert f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels ({MAX_SIDE_PX} x {MAX_SIDE_PX})" in DOC
    assert f"1 to {MAX_STEPS}" in DOC
    assert f"| {MAX_IDENTITY_REFS} per image, 256 tokens each |" in DOC
    assert f"ranks up to {MAX_FILE_DIM}, up to {MAX_FILE_BLOCKS} double" in DOC
    assert "docs/limits.md" in README


@pytest.mark.parametrize("make", [
    lambda: parse_layout({**BASE, "instances": [BOX] * (MAX_INSTANCES + 1)}),
    lambda: parse_layout({**BASE, "width": 10000}),
    lambda: parse_layout({**BASE, "instances": [{**BOX, "box": [0.1, 0.1, 0.11, 0.5]}]}),
    lambda: parse_layout({**BASE, "instances": [{**BOX, "caption": "x" * (MAX_CAPTION_CHARS + 1)}]}),
    lambda: parse_layout({**BASE, "instances": [{**BOX, "caption": "a\ud800"}]}),
    lambda: parse_layout({**BASE, "instances": [{**BOX, "box": [float("nan"), 0.1, 0.5, 0.5]}]}),
    lambda: parse_layout({**BASE, "note": float("nan")}),
    lambda: parse_layout("[" * 100000),
    lambda: parse_layout('{"width": ' + "9" * 5000 + "}"),
    lambda: ComposeOptions(steps=5000),
    lambda: ComposeOptions(guidance=float("nan")),
    lambda: check_identity_boxes(parse_layout({**BASE, "instances": [{**BOX, "ref": i % 3} for i in range(9)]}),
                                 list(range(9)), ()),
    lambda: RefCompConfig.from_json(json.dumps({"hidden_size": 2 ** 20, "num_double_blocks": 1,
                                                "num_single_blocks": 0, "num_heads": 2}),
                                    source="a.safetensors: refcomp_config"),
])
def test_quoted_messages_are_the_codes(make):
    text = message(make)
    quoted = text.split("; ")[0] if text.startswith("a.safetensors") else text
    assert quoted in DOC, text


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width", [10000, 30000])
def test_quoted_image_messages_are_the_codes(tmp_path, monkeypatch, width):
    monkeypatch.chdir(tmp_path)
    Path("refs").mkdir()
    Path("refs/huge.png").write_bytes(png_declaring(width, width))
    assert message(lambda: read_reference(Path("refs/huge.png"))) in DOC
