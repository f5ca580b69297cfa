"""Reference images of the headless pipeline under hostile input (issue 12): damaged,
truncated and oversized files give a ReferenceImageError naming the file and the flag."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from hostile_strategies import accepted_or_ours, png_declaring
from refcomp.refs import load_references, read_reference
from refcomp_core.errors import ReferenceImageError
from refcomp_core.limits import MAX_IMAGE_PIXELS


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 10, len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


FILES = {"png": encoded("PNG"), "rgba.png": encoded("PNG", "RGBA"), "jpg": encoded("JPEG"), "webp": encoded("WEBP")}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")      # PIL warns; RefComp refuses
@pytest.mark.parametrize("width, height", [(30000, 30000), (10000, 10000), (MAX_IMAGE_PIXELS, 2)])
def test_image_declaring_too_many_pixels(tmp_path, width, height):
    path = tmp_path / "huge.png"
    path.write_bytes(png_declaring(width, height))          # 30000^2 was a raw DecompressionBombError
    with pytest.raises(ReferenceImageError, match=f"--refs: the image {path} (is {width}x{height}|declares more)"):
        load_references(tmp_path)


def test_image_at_the_limit_is_not_refused_for_size(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_declaring(MAX_IMAGE_PIXELS // 8, 8))     # allowed size, but no pixel data
    with pytest.raises(ReferenceImageError, match="cannot read the image"):
        read_reference(path)


@pytest.mark.parametrize("data", [b"", b"not an image", FILES["png"][:40], FILES["jpg"][:-30],
                                  b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_damaged_files_name_the_file(tmp_path, data):
    path = tmp_path / "a_broken.png"
    path.write_bytes(data)
    with pytest.raises(ReferenceImageError, match=f"--refs: cannot read the image {path}.*re-save it"):
        load_references(tmp_path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@given(st.sampled_from(sorted(FILES)), st.data())
def test_truncated_or_flipped_images(scratch, kind, data):
    raw = bytearray(FILES[kind])
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for at, byte in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                                           min_size=1, max_size=6), label="flips"):
            raw[at] = byte
    path = scratch / f"x.{kind.split('.')[-1]}"
    path.write_bytes(bytes(raw))
    out = accepted_or_ours(lambda: read_reference(path), ReferenceImageError, (f"--refs: cannot read the image {path}",
                                                                               f"--refs: the image {path}"))
    if isinstance(out, Image.Image):
        assert out.mode == "RGB" and out.size[0] * out.size[1] <= MAX_IMAGE_PIXELS


@given(st.binary(max_size=300), st.sampled_from(["png", "jpg", "webp"]))
def test_any_bytes(scratch, data, suffix):
    path = scratch / f"y.{suffix}"
    path.write_bytes(data)
    accepted_or_ours(lambda: read_reference(path), ReferenceImageError, str(path))
