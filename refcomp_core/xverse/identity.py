"""Which boxes of a layout go through XVerse's identity pathway (issue 14: alpha routes them).

Neither release has an alpha predictor, so without a RefComp checkpoint a box's alpha is its manual
`alpha`, else its depth label (fg 1; mg, bg and none 0). A box with a reference and alpha >= 0.5 is an
identity reference; XVerse alone takes every box with a reference. Each identity reference adds
(cond_size / 16)^2 = 256 tokens to every block, and XVerse's reference position ids are exact up to 16
references, so RefComp caps them at MAX_IDENTITY_REFS.
"""
from __future__ import annotations

from typing import Sequence

from ..layout import Layout

MAX_IDENTITY_REFS = 8


def label_alpha(layout: Layout) -> list[float]:
    """alpha per box without a predictor: the manual alpha, else 1 for fg and 0 otherwise."""
    return [float(i.alpha) if i.alpha is not None else (1.0 if i.depth == "fg" else 0.0) for i in layout.instances]


def identity_boxes(layout: Layout, alpha: Sequence[float] | None) -> list[int]:
    """Indices of the boxes with a reference and alpha >= 0.5; every box with a reference when `alpha` is
    None (XVerse alone)."""
    return [i for i, inst in enumerate(layout.instances)
            if isinstance(inst.ref, int) and (alpha is None or alpha[i] >= 0.5)]
