"""The toy evaluator scores ground-truth renders highly and wrong renders low."""
import colorsys
import dataclasses

import numpy as np

from refcomp.toy.analysis import blobs, classify_shape, classify_texture, colour_classes, components, hsv
from refcomp.toy.evaluate import score_image, summarize
from refcomp.toy.render import background, paint
from refcomp.toy.vocab import COLOURS, SHAPES, TEXTURES
from refcomp.toy.world import sample_scene, scene_seed

SCENES = [sample_scene(scene_seed("test", 1000 + i)) for i in range(40)]


def _score(render) -> dict:
    scores = []
    for scene in SCENES:
        scores += score_image(render(scene), scene.layout())
    return summarize(scores)


def _replace_objects(scene, fn):
    return dataclasses.replace(scene, objects=tuple(fn(i, o) for i, o in enumerate(scene.objects)))


def test_hsv_matches_colorsys():
    rng = np.random.default_rng(0)
    img = rng.random((5, 7, 3))
    h, s, v = hsv(img)
    for y in range(5):
        for x in range(7):
            hh, ss, vv = colorsys.rgb_to_hsv(*img[y, x])
            assert np.isclose(h[y, x], hh * 360) and np.isclose(s[y, x], ss) and np.isclose(v[y, x], vv)


def test_components_count_and_separate():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True
    mask[5:9, 5] = True
    mask[5, 5:9] = True
    mask[0, 9] = True
    labels, count = components(mask)
    assert count == 3
    assert len(np.unique(labels[1:3, 1:3])) == 1 and labels[5, 8] == labels[8, 5] != labels[1, 1]
    snake = np.zeros((9, 9), dtype=bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    assert components(snake)[1] == 1


def test_every_shape_and_texture_is_read_back_at_several_aspects_and_phases():
    for shape in SHAPES:
        for w, h in ((24, 24), (36, 20), (16, 34)):
            canvas = np.ones((64, 64, 3), dtype=np.float32)
            paint(canvas, shape, "blue", "solid", (5, 7, 5 + w, 7 + h))
            blob = blobs(canvas)[0]
            assert classify_shape(blob) == shape, (shape, w, h)
    for tex in TEXTURES:
        for shift in (0, 2, 3):
            canvas = background("solid", "grey", "grey", 64)
            paint(canvas, "square", "yellow", tex, (10, 10, 40, 34))
            canvas = np.roll(canvas, shift, axis=(0, 1))                 # the reader is phase-free
            blob = blobs(canvas)[0]
            assert blob.colour == "yellow" and classify_texture(canvas, blob) == tex, (tex, shift)


def test_colour_classes_ignore_pale_backgrounds_and_read_dark_shades():
    for kind, top, bottom in (("solid", "white", "white"), ("gradient", "mint", "sky"), ("solid", "cream", "cream")):
        assert np.all(colour_classes(background(kind, top, bottom, 32)) == -1)
    for k, (name, rgb) in enumerate(COLOURS.items()):
        img = np.array([[rgb, [c * 0.45 for c in rgb]]], dtype=np.float32)
        assert list(colour_classes(img)[0]) == [k, k], name


def test_ground_truth_renders_score_high():
    m = _score(lambda s: s.render())
    assert m["fg_n"] > 40 and m["bg_n"] > 40
    assert m["fg_miou"] > 0.9 and m["fg_success"] > 0.95
    assert m["bg_miou"] > 0.7 and m["bg_success"] > 0.85
    assert m["fg_colour_acc"] > 0.95 and m["fg_texture_acc"] > 0.95 and m["fg_shape_acc"] > 0.85


def test_blank_image_scores_zero():
    m = _score(lambda s: background(*s.background, s.size))
    assert m["fg_miou"] == 0 and m["bg_miou"] == 0 and m["fg_success"] == 0
    assert m["fg_colour_acc"] == m["fg_shape_acc"] == m["fg_texture_acc"] == 0


def test_objects_in_the_wrong_place_score_low():
    def moved(scene):
        rng = np.random.default_rng(scene.seed % 1000)

        def move(i, o):
            w, h = o.box[2] - o.box[0], o.box[3] - o.box[1]
            x0 = (o.box[0] + scene.size // 2 + int(rng.integers(-4, 5))) % (scene.size - w)
            y0 = (o.box[1] + scene.size // 2 + int(rng.integers(-4, 5))) % (scene.size - h)
            return dataclasses.replace(o, box=(x0, y0, x0 + w, y0 + h))
        return _replace_objects(scene, move).render()
    m = _score(moved)
    assert m["fg_miou"] < 0.35 and m["bg_miou"] < 0.35


def test_wrong_attributes_score_low():
    def other(seq, value, i):
        seq = list(seq)
        return seq[(seq.index(value) + 1 + i % (len(seq) - 1)) % len(seq)]

    wrong_shape = _score(lambda s: _replace_objects(
        s, lambda i, o: dataclasses.replace(o, shape=other(SHAPES, o.shape, i))).render())
    wrong_texture = _score(lambda s: _replace_objects(
        s, lambda i, o: dataclasses.replace(o, texture=other(TEXTURES, o.texture, i))).render())
    right = _score(lambda s: s.render())
    assert wrong_shape["fg_shape_acc"] < 0.35 < right["fg_shape_acc"]
    assert wrong_shape["fg_texture_acc"] > 0.9                 # only the shape changed
    assert wrong_texture["fg_texture_acc"] < 0.2 and wrong_texture["fg_shape_acc"] > 0.8


def test_a_missing_colour_is_not_grounded_and_fails_identity():
    scene = SCENES[0]
    used = {o.colour for o in scene.objects}
    spare = next(c for c in COLOURS if c not in used)
    recoloured = _replace_objects(scene, lambda i, o: dataclasses.replace(o, colour=spare) if i == len(
        scene.objects) - 1 else o)
    scores = score_image(recoloured.render(), scene.layout())
    assert scores[-1].iou == 0.0 and scores[-1].colour_ok is False
