"""Which boxes go through XVerse's identity pathway: a reference and alpha >= 0.5, alpha from the box's
manual alpha or its depth label (neither release predicts it); XVerse alone takes every referenced box."""
from __future__ import annotations

from refcomp_core import parse_layout
from refcomp_core.xverse.identity import identity_boxes, label_alpha


def test_alpha_from_the_label_and_the_boxes_it_routes() -> None:
    boxes = [("fg", None, 0), ("mg", None, 1), ("bg", 0.7, 2), (None, None, 0), ("fg", 0.2, 1), ("fg", None, None),
             (None, 0.5, 2)]
    layout = parse_layout({"version": 1, "width": 64, "height": 64, "instances": [
        {"box": [0, 0, 0.5, 0.5], "ref": ref, "caption": "a cat", "depth": depth, "alpha": alpha}
        for depth, alpha, ref in boxes]}, num_refs=3)
    alpha = label_alpha(layout)
    assert alpha == [1.0, 0.0, 0.7, 0.0, 0.2, 1.0, 0.5]
    assert identity_boxes(layout, alpha) == [0, 2, 6]                 # box 5 is fg but has no reference
    assert identity_boxes(layout, None) == [0, 1, 2, 3, 4, 6]
