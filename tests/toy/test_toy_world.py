"""The toy world: deterministic per seed, captions/boxes/depths consistent with the pixels."""
from collections import Counter

import numpy as np
import pytest

from refcomp.toy.render import shape_mask, texture_dark
from refcomp.toy.vocab import BACKGROUNDS, COLOURS, DARK, SHAPES, TEXTURES, VOCAB
from refcomp.toy.world import MIN_VISIBLE, sample_scene, scene_seed
from refcomp_core import parse_layout

SEEDS = [scene_seed("test", i) for i in range(40)]


def test_same_seed_same_scene_and_pixels():
    for seed in SEEDS[:10]:
        a, b = sample_scene(seed), sample_scene(seed)
        assert a == b
        assert np.array_equal(a.render(), b.render())
        assert all(np.array_equal(a.reference(i), b.reference(i)) for i in range(len(a.objects)))


def test_seeds_and_splits_differ():
    assert len({sample_scene(s).caption for s in SEEDS}) > 35
    assert scene_seed("train", 0) != scene_seed("eval", 0)
    train = {scene_seed("train", i) for i in range(500)}
    assert not train & {scene_seed("eval", i) for i in range(500)}
    with pytest.raises(ValueError, match="split"):
        scene_seed("nope", 0)


def test_boxes_bound_the_silhouettes_and_pixels_have_the_colour():
    for seed in SEEDS:
        scene = sample_scene(seed)
        img = scene.render()
        visible = scene.visible_masks()
        covered = np.zeros(img.shape[:2], dtype=bool)
        for obj, vis in zip(scene.objects, visible):
            mask = shape_mask(obj.shape, obj.box, scene.size)
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = obj.box
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            tight = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min()) / ((x1 - x0) * (y1 - y0))
            assert tight >= (0.75 if obj.shape in ("star", "triangle", "diamond") else 0.9)   # tips may lose a px
            main = np.array(COLOURS[obj.colour], dtype=np.float32)
            pix = img[vis]
            is_main = np.all(np.isclose(pix, main), axis=1)
            is_dark = np.all(np.isclose(pix, main * DARK), axis=1)
            assert np.all(is_main | is_dark)
            dark_expected = texture_dark(obj.texture, scene.size)[vis]
            assert np.array_equal(is_dark, dark_expected)
            covered |= mask
        # outside every object the image is the pale background
        sat = img.max(-1) - img.min(-1)
        assert np.all(sat[~covered] < 0.2)


def test_depth_follows_z_order_and_every_object_stays_visible():
    for seed in SEEDS:
        scene = sample_scene(seed)
        order = {"bg": 0, "mg": 1, "fg": 2}
        ranks = [order[o.depth] for o in scene.objects]
        assert ranks == sorted(ranks)                           # back to front: bg, mg, fg
        assert scene.objects[-1].depth == "fg"
        assert [o.z for o in scene.objects] == list(range(len(scene.objects)))
        for obj, vis in zip(scene.objects, scene.visible_masks()):
            assert vis.sum() >= MIN_VISIBLE * shape_mask(obj.shape, obj.box, scene.size).sum()


def test_captions_name_every_object_in_z_order_with_known_words():
    for seed in SEEDS:
        scene = sample_scene(seed)
        pos = [scene.caption.index(o.caption) for o in scene.objects]
        assert pos == sorted(pos)
        assert {o.colour for o in scene.objects}.__len__() == len(scene.objects)     # distinct colours
        for o in scene.objects:
            assert o.caption.split()[1:] == [o.colour, {"solid": "plain", "stripes": "striped", "dots": "dotted",
                                                       "checker": "checkered"}[o.texture], o.shape]
        words = scene.caption.replace(",", " ").split()
        assert set(words) <= set(VOCAB)
        assert scene.background[1] in scene.caption


def test_reference_is_the_object_alone_on_white_elsewhere():
    same = 0
    for seed in SEEDS:
        scene = sample_scene(seed)
        for i, obj in enumerate(scene.objects):
            ref = scene.reference(i)
            mask = shape_mask(obj.shape, obj.ref_box, scene.size)
            assert np.all(ref[~mask] == 1.0)
            assert np.all(np.isclose(ref[mask], np.array(COLOURS[obj.colour])).all(-1)
                          | np.isclose(ref[mask], np.array(COLOURS[obj.colour]) * DARK).all(-1))
            w, h = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
            rw, rh = obj.ref_box[2] - obj.ref_box[0], obj.ref_box[3] - obj.ref_box[1]
            assert abs(rw / rh - w / h) < 0.35 * w / h                  # same object, same aspect
            same += obj.ref_box == obj.box
    assert same == 0


def test_layout_is_valid_v1_and_carries_the_truth():
    for seed in SEEDS:
        scene = sample_scene(seed)
        doc = scene.layout()
        layout = parse_layout(doc, num_refs=len(scene.objects))
        assert len(layout) == len(scene.objects)
        for inst, obj in zip(layout.instances, scene.objects):
            assert inst.depth == obj.depth and inst.caption == obj.caption
            assert inst.extra["shape"] == obj.shape and inst.extra["texture"] == obj.texture
            assert np.allclose(np.array(inst.box) * scene.size, obj.box)


def test_textures_have_period_8_and_stay_visible():
    for tex in TEXTURES[1:]:
        dark = texture_dark(tex, 64)
        assert np.array_equal(dark, np.roll(dark, 8, axis=0)) and np.array_equal(dark, np.roll(dark, 8, axis=1))
        assert not np.array_equal(dark, np.roll(dark, 4, axis=0))
        assert 0.1 < dark.mean() < 0.6


def test_the_world_covers_every_attribute():
    scenes = [sample_scene(scene_seed("test", i)) for i in range(150)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES) and len(SHAPES) >= 6
    assert {o.colour for o in objs} == set(COLOURS) and len(COLOURS) >= 8
    assert {o.texture for o in objs} == set(TEXTURES) and len(TEXTURES) >= 4
    assert {o.depth for o in objs} == {"bg", "mg", "fg"}
    counts = Counter(len(s.objects) for s in scenes)
    assert min(counts) == 1 and max(counts) == 8
    assert {s.background[0] for s in scenes} == {"solid", "gradient"}
    assert {s.background[1] for s in scenes} <= set(BACKGROUNDS)
