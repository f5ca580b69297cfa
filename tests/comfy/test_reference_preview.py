"""Reference thumbnails for the canvas (nodes/reference_preview.py), without ComfyUI."""
from __future__ import annotations

import io
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from PIL import Image

from refcomp_pack.nodes import reference_preview as rp
from refcomp_pack.nodes import references
from refcomp_pack.nodes.types import ReferenceSet


@pytest.fixture
def input_dir(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGBA", (300, 150), (255, 0, 0, 0)).save(refs / "b.png")          # transparent -> white
    Image.new("RGB", (40, 80), (0, 0, 255)).save(refs / "A.jpg")
    (refs / "notes.txt").write_text("not an image")
    (tmp_path / "secret.png").write_bytes(b"x")
    return tmp_path


def test_listing_is_reference_set_order_with_versioned_urls(input_dir):
    out = rp.folder_listing(str(input_dir), "refs")
    assert out["names"] == references.list_images(str(input_dir / "refs")) == ["A.jpg", "b.png"]
    for name, url in zip(out["names"], out["urls"]):
        parsed = urlparse(url)
        q = parse_qs(parsed.query)
        assert parsed.path == rp.ROUTE_THUMB and q["folder"] == ["refs"] and q["name"] == [name]
        assert int(q["v"][0]) > 0


def test_listing_and_thumbnails_stay_in_the_input_folder(input_dir):
    with pytest.raises(ValueError, match="outside ComfyUI's input folder"):
        rp.folder_listing(str(input_dir), "../")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rp.folder_listing(str(input_dir), "nope")
    for name in ("../secret.png", "notes.txt", "c.png", "/etc/passwd"):
        with pytest.raises(FileNotFoundError, match="is not a reference image"):
            rp.thumbnail_path(str(input_dir), "refs", name)
    assert rp.thumbnail_path(str(input_dir), "refs", "b.png") == str(input_dir / "refs" / "b.png")


def test_thumbnail_is_small_keeps_aspect_and_reads_like_the_reference_set(input_dir):
    png = rp.thumbnail_png(str(input_dir / "refs" / "b.png"))
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size == (rp.THUMB_PX, rp.THUMB_PX // 2)
    assert im.convert("RGB").getpixel((10, 10)) == (255, 255, 255)          # transparency on white, as loaded
    small = Image.open(io.BytesIO(rp.thumbnail_png(str(input_dir / "refs" / "A.jpg"))))
    assert small.size == (40, 80)                                               # never enlarged
    r, g, b = small.convert("RGB").getpixel((20, 40))
    assert b > 200 and r < 40 and g < 40


def test_set_thumbnails_writes_one_png_per_reference(tmp_path):
    red = torch.zeros(20, 10, 3)
    red[..., 0] = 1.0
    refs = ReferenceSet(images=[red, torch.ones(300, 200, 3)], names=["image 0", "b.png"])
    out = rp.set_thumbnails(refs, str(tmp_path))
    assert [o["type"] for o in out] == ["temp", "temp"] and all(o["subfolder"] == "refcomp" for o in out)
    first = Image.open(tmp_path / "refcomp" / out[0]["filename"])
    assert first.size == (10, 20) and first.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    assert max(Image.open(tmp_path / "refcomp" / out[1]["filename"]).size) == rp.THUMB_PX
    assert out[0]["filename"] != rp.set_thumbnails(refs, str(tmp_path))[0]["filename"]    # a new run, new files
