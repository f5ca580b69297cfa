"""Node-pack logic without ComfyUI (runs everywhere)."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from PIL import Image

import refcomp_pack
from refcomp_core import LayoutError, ModelMismatchError, parse_layout
from refcomp_core.config import RefCompConfig
from refcomp_pack.nodes import encoding, flux_views, layout_tools, references
from refcomp_pack.nodes.flux_apply import replace_conflicts
from refcomp_pack.nodes.flux_host import CONTEXT_KEY, DoubleBlockPatch, FluxComposition
from refcomp_pack.nodes.types import ReferenceSet

LAYOUT = {"version": 1, "width": 512, "height": 256, "instances": [
    {"box": [0.0, 0.0, 0.5, 0.5], "ref": 0, "caption": "a cat", "depth": "fg", "alpha": None},
    {"box": [0.5, 0.5, 1.0, 1.0], "ref": 1, "caption": None, "depth": "bg", "alpha": 0.1},
    {"box": [0.2, 0.2, 0.8, 0.8], "ref": None, "caption": "grass", "depth": None, "alpha": None}]}


def test_root_package_exports_nothing_without_comfyui():
    assert refcomp_pack.__all__ == []
    assert not hasattr(refcomp_pack, "comfy_entrypoint")


# --- references ------------------------------------------------------------------------------
def test_subfolder_is_confined(tmp_path):
    (tmp_path / "refs").mkdir()
    assert references.resolve_subfolder(str(tmp_path), "refs") == os.path.realpath(tmp_path / "refs")
    for bad in ("..", "../etc", "/etc", "refs/../../x"):
        with pytest.raises(ValueError, match="outside ComfyUI's input folder"):
            references.resolve_subfolder(str(tmp_path), bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        references.resolve_subfolder(str(tmp_path), "nope")
    with pytest.raises(ValueError, match="folder is empty"):
        references.resolve_subfolder(str(tmp_path), " ")


def test_folder_images_sorted_filtered_and_rgba_on_white(tmp_path):
    Image.new("RGBA", (4, 3), (255, 0, 0, 0)).save(tmp_path / "B.png")       # fully transparent red
    Image.new("RGB", (5, 5), (0, 0, 255)).save(tmp_path / "a.jpg")
    Image.new("RGB", (2, 2), (0, 255, 0)).save(tmp_path / "c.webp")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "d.gif").write_bytes(b"GIF89a")
    assert references.list_images(str(tmp_path)) == ["a.jpg", "B.png", "c.webp"]
    calls = []
    rs = references.from_folder(str(tmp_path), lambda d, t: calls.append((d, t)))
    assert rs.names == ["a.jpg", "B.png", "c.webp"] and calls[-1] == (3, 3)
    assert rs.images[1].shape == (3, 4, 3)
    assert torch.allclose(rs.images[1], torch.ones(3, 4, 3))                  # transparent -> white
    assert rs.images[2][0, 0, 1] == 1.0 and rs.images[2][0, 0, 0] == 0.0


def test_batch_with_mask_meanings():
    img = torch.zeros(2, 2, 2, 3)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bg = references.from_batch(img, mask, references.MASK_BACKGROUND)
    assert bg.images[0][0, 0].tolist() == [1.0, 1.0, 1.0] and bg.images[0][1, 1].tolist() == [0.0, 0.0, 0.0]
    obj = references.from_batch(img, mask, references.MASK_OBJECT)
    assert obj.images[1][0, 0].tolist() == [0.0, 0.0, 0.0] and obj.images[1][1, 1].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="same size"):
        references.from_batch(img, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="one mask per image"):
        references.from_batch(img, torch.zeros(3, 2, 2))
    both = references.combine(references.from_batch(img), ReferenceSet([torch.ones(1, 1, 3)], ["f.png"]))
    assert len(both) == 3 and both.names[-1] == "f.png"


# --- layout, alpha, preview --------------------------------------------------------------------
def test_canvas_parse_and_ref_check():
    empty = layout_tools.parse_canvas("", 640, 480, None)
    assert (empty.width, empty.height, len(empty)) == (640, 480, 0)
    lay = layout_tools.parse_canvas(json.dumps(LAYOUT), 1024, 1024, 2)
    assert len(lay) == 3 and lay.width == 512
    with pytest.raises(LayoutError, match=r"instances\[1\]\.ref"):
        layout_tools.parse_canvas(json.dumps(LAYOUT), 1024, 1024, 1)


def test_alpha_overrides_depth_and_resolution():
    assert layout_tools.parse_overrides("0: 0.9, 2=0.25\n1:0", 3) == {0: 0.9, 2: 0.25, 1: 0.0}
    assert layout_tools.parse_overrides("[0.5, null, 1]", 3) == {0: 0.5, 2: 1.0}
    with pytest.raises(LayoutError, match="instance 5 does not exist"):
        layout_tools.parse_overrides("5: 0.1", 3)
    with pytest.raises(LayoutError, match=r"\[0, 1\]"):
        layout_tools.parse_overrides("0: 1.5", 3)
    with pytest.raises(LayoutError, match="index: alpha"):
        layout_tools.parse_overrides("zero is 1", 3)
    lay = parse_layout(LAYOUT)
    depth = layout_tools.depth_alphas(lay, layout_tools.depth_values(0.8, 0.3, 0.0))
    assert depth == {0: 0.8}                       # manual alpha (instance 1) and caption-only (2) untouched
    lay2 = layout_tools.set_alphas(lay, depth)
    assert layout_tools.resolved_alphas(lay2, None) == [0.8, 0.1, 0.0]
    assert layout_tools.resolved_alphas(lay, torch.tensor([0.6, 0.7, 0.9])) == [pytest.approx(0.6), 0.1, 0.0]
    with pytest.raises(ValueError, match="fg_alpha"):
        layout_tools.depth_values(1.2, 0.3, 0.0)


def test_preview_draws_boxes():
    lay = parse_layout(LAYOUT)
    img = torch.zeros(64, 128, 3)
    out = layout_tools.draw_preview(img, lay, [0.7, 0.1, 0.0])
    assert out.shape == img.shape and out.max() > 0.5
    assert out[40:60, 10:20].abs().sum() == 0      # far from every box edge and label: untouched
    assert layout_tools.blank_canvas(lay).shape == (256, 512, 3)


# --- encoding ------------------------------------------------------------------------------------
class FakeVision:
    def __init__(self, dim):
        self.dim, self.calls = dim, 0

    def encode_image(self, image):
        assert image.ndim == 4 and image.shape[0] == 1
        self.calls += 1
        return {"image_embeds": torch.full((1, self.dim), float(self.calls))}


class FakeClip:
    def __init__(self):
        self.encoded = []

    def tokenize(self, text):
        return {"l": text, "t5xxl": f"t5:{text}"}

    def encode_from_tokens(self, tokens, return_pooled=False):
        self.encoded.append(tokens)
        return None, torch.full((1, 4), float(len(tokens["l"])))


def test_encode_instances_runs_each_encoder_once():
    lay = parse_layout(LAYOUT)
    refs = ReferenceSet([torch.rand(8, 8, 3), torch.rand(6, 9, 3)], ["a", "b"])
    clip_v, dino, clip = FakeVision(3), FakeVision(5), FakeClip()
    steps = []
    feats = encoding.encode_instances(lay, refs, clip_v, dino, clip, lambda d, t: steps.append((d, t)))
    assert feats.clip_image.shape == (2, 3) and feats.dino.shape == (2, 5) and clip_v.calls == 2
    assert feats.caption.shape == (3, 4) and feats.caption[1].abs().sum() == 0
    assert feats.caption[0, 0] == len("a cat") and feats.caption[2, 0] == len("grass")
    assert all(t["t5xxl"] == "t5:" for t in clip.encoded)       # T5 gets the empty prompt
    assert steps[-1][0] == steps[-1][1] == 7


def test_encode_errors_are_clear():
    lay = parse_layout(LAYOUT)
    with pytest.raises(ValueError, match="references image 1 but the reference set has 1"):
        encoding.check_references(lay, ReferenceSet([torch.rand(2, 2, 3)], ["a"]))
    with pytest.raises(ValueError, match="no clip is connected"):
        encoding.encode_captions(None, lay)
    cfg = RefCompConfig(hidden_size=32, num_double_blocks=1, num_single_blocks=1, num_heads=2, text_dim=8)
    feats = encoding.InstanceFeatures(caption=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="caption embeds have width 4 but this checkpoint expects 8"):
        encoding.check_widths(feats, cfg)


# --- FLUX host helpers ---------------------------------------------------------------------------
def test_token_grid_pads_like_comfyui():
    g = flux_views.token_grid(9, 16, 2)
    assert (g.h, g.w, g.content_h, g.content_w) == (5, 8, 4.5, 8.0)


def test_row_flags_follow_cond_or_uncond():
    assert flux_views.row_flags(4, [1, 0], False) == [False, False, True, True]
    assert flux_views.row_flags(4, [1, 0], True) == [True] * 4
    assert flux_views.row_flags(3, None, False) == [True] * 3
    with pytest.raises(ValueError, match="does not split"):
        flux_views.row_flags(3, [0, 1], False)


def test_sigma_to_percent_inverts_schedule():
    to_sigma = lambda p: 1.0 if p <= 0 else (0.0 if p >= 1 else math.exp(-3 * p))   # noqa: E731
    for p in (0.1, 0.3, 0.62):
        assert flux_views.sigma_to_percent(to_sigma, to_sigma(p)) == pytest.approx(p, abs=1e-9)
    assert flux_views.sigma_to_percent(to_sigma, 2.0) == 0.0
    assert flux_views.sigma_to_percent(to_sigma, 0.0) == 1.0


def test_canonical_rope_reads_rotation_matrices():
    angle = torch.rand(1, 5, 4)
    pe = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], -1).reshape(1, 5, 4, 2, 2)[:, None]
    rope = flux_views.canonical_rope(pe)
    assert torch.allclose(rope.cos, angle.cos()) and torch.allclose(rope.sin, angle.sin())
    with pytest.raises(ValueError, match="pe shape"):
        flux_views.canonical_rope(torch.zeros(1, 5, 4))


class UNetModel:
    pass


class SDXL:
    def __init__(self):
        self.diffusion_model = UNetModel()


class _ModelPatcher:
    def __init__(self, base):
        self.model = base


def test_non_flux_model_is_refused_by_name():
    with pytest.raises(ModelMismatchError, match=r"needs a FLUX\.1 model.*SDXL \(diffusion model UNetModel\)"):
        flux_views.flux_dims(_ModelPatcher(SDXL()))


class _Patcher:
    def __init__(self, dit):
        self.model_options = {"transformer_options": {"patches_replace": {"dit": dit}}}


def test_replace_conflicts_named():
    assert replace_conflicts(_Patcher({})) == []
    assert replace_conflicts(_Patcher({("double_block", 3): object(), ("single_block", 0): object(),
                                       ("other", 1): object()})) == ["double_block 3", "single_block 0"]


def test_block_patch_without_context_runs_original():
    comp = FluxComposition.__new__(FluxComposition)
    comp.uid, comp._warned = "me", set()

    class Block:
        num_heads = 2
        img_mod = txt_mod = img_attn = txt_attn = type("M", (), {"lin": None, "qkv": None, "norm": None,
                                                                   "proj": None})()
        img_norm1 = img_norm2 = txt_norm1 = txt_norm2 = None
        img_mlp = txt_mlp = (None, None, None)

    patch = DoubleBlockPatch(comp, 0, Block())
    seen = []
    args = {"img": torch.zeros(1, 4, 8), "txt": torch.zeros(1, 2, 8), "vec": torch.zeros(1, 8), "pe": None,
            "transformer_options": {}}
    out = patch(args, {"original_block": lambda a: seen.append(a) or {"img": a["img"], "txt": a["txt"]}})
    assert seen == [args] and out["img"] is args["img"]
    args["transformer_options"] = {CONTEXT_KEY: type("C", (), {"owner": "someone else"})()}
    patch(args, {"original_block": lambda a: seen.append(a) or {"img": a["img"], "txt": a["txt"]}})
    assert len(seen) == 2
