"""XVerse Encode's glue without ComfyUI: the 128-token T5 cut, identity boxes, reference images, packing,
and the clear errors (stand-in ComfyUI objects from driver_nodes)."""
from __future__ import annotations

import pytest
import torch

import driver_nodes
from refcomp_core import parse_layout
from refcomp_core.errors import RefCompError
from refcomp_core.xverse.presets import PRESETS
from refcomp_core.xverse.spans import SpanNotFoundError
from refcomp_pack.nodes import xverse_inputs as xi

CLIP = driver_nodes._T5Clip(t5_dim=24, pooled_dim=20)
VISION = driver_nodes._PenultimateVision(dim=12, tokens=5)
LAYOUT = parse_layout({"version": 1, "width": 128, "height": 96, "instances": [
    {"box": [0.0, 0.2, 0.4, 1.0], "ref": 0, "caption": "a cat", "depth": "fg"},
    {"box": [0.5, 0.2, 1.0, 1.0], "ref": 1, "caption": "a dog", "alpha": 0.7},
    {"box": [0.2, 0.2, 0.6, 0.6], "ref": 1, "caption": "a bowl", "depth": "mg"},
    {"box": [0.0, 0.0, 1.0, 0.2], "caption": "sky"}]}, num_refs=2)
IMAGES = [torch.rand(30, 40, 3), torch.rand(48, 24, 3)]


def test_t5_tokens_are_exactly_128() -> None:
    ids = [t[0] for t in xi.t5_tokens(CLIP, "a cat and a dog")["t5xxl"][0]]
    assert len(ids) == 128 and ids[5] == 1 and set(ids[6:]) == {0}
    long = " ".join(f"w{i}" for i in range(300))
    ids = [t[0] for t in xi.t5_tokens(CLIP, long)["t5xxl"][0]]
    assert len(ids) == 128 and ids[-1] == 1 and 0 not in ids              # 127 tokens + EOS, as HF truncates
    ids, mask = xi.t5_ids(CLIP, "a cat")
    assert mask == [1, 1, 1] + [0] * 125


def test_identity_boxes_by_manual_alpha_or_fg() -> None:
    assert xi.identity_boxes(LAYOUT) == [0, 1]


def test_reference_images_and_packing() -> None:
    sq = xi.square_on_white(torch.zeros(30, 40, 3))
    assert sq.shape == (40, 40, 3) and bool((sq[:5] == 1).all()) and bool((sq[5:35] == 0).all())
    tokens = xi.vae_tokens(driver_nodes._Vae(), xi.square_on_white(IMAGES[0]), 256, lambda z: z * 2 + 1)
    assert tokens.shape == (256, 64)
    latent = driver_nodes._Vae().encode(xi.resized(xi.square_on_white(IMAGES[0]), 256)[None]) * 2 + 1
    assert torch.allclose(tokens[0], latent[0, :, :2, :2].flatten())    # (c ph pw) of the first 2x2 patch
    assert xi.clip_penultimate(VISION, sq).shape == (1, 5, 12)


def test_prepare_binds_words_and_refuses_clearly() -> None:
    prep = xi.prepare(LAYOUT, IMAGES, "a cat and a dog at home", clip=CLIP, clip_vision=VISION,
                      vae=driver_nodes._Vae(), preset=PRESETS["cli"], id_refs={1}, process_in=lambda z: z)
    assert prep.boxes == [0, 1] and prep.words == ["cat", "dog"] and [r.is_id for r in prep.references] == [False, True]
    assert prep.binding.text_cond_mask[1, 0] and prep.binding.text_cond_mask[4, 1]
    assert prep.references[0].txt.shape == (1, 128, 24) and prep.references[1].latents.shape == (256, 64)
    with pytest.raises(SpanNotFoundError, match="'dog' does not appear in the prompt"):
        xi.prepare(LAYOUT, IMAGES, "a cat at home", clip=CLIP, clip_vision=VISION, vae=driver_nodes._Vae(),
                   preset=PRESETS["cli"], id_refs=set(), process_in=lambda z: z)
    no_caption = parse_layout({**LAYOUT.to_dict(), "instances": [{"box": [0, 0, 0.5, 0.5], "ref": 0, "depth": "fg"}]},
                              num_refs=2)
    with pytest.raises(RefCompError, match="box 0 is an identity reference .* has no caption"):
        xi.prepare(no_caption, IMAGES, "a cat", clip=CLIP, clip_vision=VISION, vae=driver_nodes._Vae(),
                   preset=PRESETS["cli"], id_refs=set(), process_in=lambda z: z)
    with pytest.raises(RefCompError, match="need the clip_vision input"):
        xi.prepare(LAYOUT, IMAGES, "a cat and a dog", clip=CLIP, clip_vision=None, vae=driver_nodes._Vae(),
                   preset=PRESETS["cli"], id_refs=set(), process_in=lambda z: z)
    many = parse_layout({**LAYOUT.to_dict(), "instances": [
        {"box": [0, 0, 0.5, 0.5], "ref": 0, "caption": f"a thing{i}", "depth": "fg"} for i in range(9)]}, num_refs=2)
    with pytest.raises(RefCompError, match="9 identity boxes .* at most 8"):
        xi.prepare(many, IMAGES, "x", clip=CLIP, clip_vision=VISION, vae=driver_nodes._Vae(), preset=PRESETS["cli"],
                   id_refs=set(), process_in=lambda z: z)


def test_id_refs_parse() -> None:
    assert xi.parse_id_refs("0, 2", 3) == {0, 2} and xi.parse_id_refs("", 3) == set()
    with pytest.raises(RefCompError, match="id_refs: '5' is not a reference index in 0..2"):
        xi.parse_id_refs("5", 3)


def test_confine_mask_covers_the_canvas_grid() -> None:
    prep = xi.prepare(LAYOUT, IMAGES, "a cat and a dog at home", clip=CLIP, clip_vision=VISION,
                      vae=driver_nodes._Vae(), preset=PRESETS["cli"], id_refs=set(), process_in=lambda z: z, confine=True)
    mask = prep.confine_mask()
    assert mask.shape == (6 * 8, 2) and prep.canvas == (128, 96)          # 96 x 128 px = 6 x 8 tokens
    assert bool(mask[2 * 8 + 0, 0]) and not bool(mask[2 * 8 + 0, 1])       # row 2, col 0: in the cat box only
    assert not bool(mask[0, 0]) and not bool(mask[0, 1])                  # the top row: in neither box
    prep.confine = False
    assert prep.confine_mask() is None
