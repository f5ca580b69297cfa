"""What a pathway is: a piece of a patched FLUX block that acts at named places.

The block runner (`refcomp_core.blocks.runner`) calls the active pathways of one block at
their places; a pathway never edits another's code, and a host only builds views.

Places in a double-stream block, in order:
0. `wrap_double_view`: the view the block body runs with (e.g. a LoRA on the text stream's own
   projections); the other places still see the host's view in `ctx.view`; `before_double`
   adjusts the block's inputs (e.g. a LoRA on x_embedder, added at the first block);
1. `img_modulation` / `txt_modulation`: per-token AdaLN parameters of the image / text tokens
   (before the attention);
2. `beside_attention`: a branch parallel to the joint attention, reading its inputs (and the joint
   keys and values) and adding to the image attention output before the attention gate;
3. `after_attention`: reads the image tokens after the attention residual (e.g. feedback);
4. `after_double`: runs after the whole block on its outputs (e.g. InstanceAssemble's branch).
Places in a single-stream block: `wrap_single_view`, `single_modulation` (per-token AdaLN of image
tokens), `single_attention` (extra keys and values every row attends to, with a bias) and
`after_single`.

A pathway with `inside = True` needs the core to run the block body itself (1-3); when no active
pathway does, the host's own block runs and only the after-block places are called.

Axis letters: b batch, L text tokens, N image tokens, g modulation groups, t tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..blocks.views import DoubleBlockView, SingleBlockView
from ..rope import Rope

Tensor = torch.Tensor


def mod_chunks(m: Tensor, k: int) -> list[Tensor]:
    """An AdaLN output (b, k*D) -> its k chunks (shift, scale, gate, ...) as (b, 1, D) each."""
    return [c[:, None] for c in m.chunk(k, dim=-1)]


@dataclass(frozen=True)
class ModRequest:
    """Per-token modulation: conditioning y (b, g, D) of g groups applied to image tokens `cov` (t,)
    with weights (t, g): mod(vec) + sum_g w (mod(y_g) - mod(vec)).

    offset: stream position of image token 0 (the runner sets L in a single block's [txt | img]);
    blend: optional cached dense form for the fused hot path, blend(length, offset, dtype) ->
    (length, g + 1) = [w | 1] over the stream (built from cov and weights when absent)."""

    y: Tensor
    cov: Tensor
    weights: Tensor
    offset: int = 0
    blend: Callable[[int, int, torch.dtype], Tensor] | None = None


@dataclass
class DoubleContext:
    """One double-block call on a run of batch rows; pathways share intermediate results here.

    vec: (b, D); rope: over [txt | img]; txt_base: the base text-stream modulation (b, 6D), set by
    the runner before the attention; fg_y: (b, g, D) FG conditioning, set by the identity pathway.
    """

    view: DoubleBlockView
    vec: Tensor
    rope: Rope
    txt_len: int
    txt_base: Tensor | None = None
    fg_y: Tensor | None = None


@dataclass
class SingleContext:
    """One single-block call on a run of batch rows.  vec: (b, D); rope over [txt | img]."""

    view: SingleBlockView
    vec: Tensor
    rope: Rope
    txt_len: int


@dataclass(frozen=True)
class JointAttention:
    """What the joint attention of a double block computed, for branches beside it.

    xm: (b, N, D) per-token-modulated, normed image tokens; q, k, v: (b, N, D) their raw
    projections (before QK-norm and RoPE); jk, jv: (b, L+N, h, c) the joint keys (normed, roped)
    and values over [txt | img]."""

    xm: Tensor
    q: Tensor
    k: Tensor
    v: Tensor
    jk: Tensor | None = None
    jv: Tensor | None = None


class Pathway:
    """Base class: every place is a no-op. Subclasses override the places they act at."""

    inside: bool = False

    def wrap_double_view(self, view: DoubleBlockView) -> DoubleBlockView:
        return view

    def before_double(self, ctx: DoubleContext, img: Tensor, txt: Tensor) -> tuple[Tensor, Tensor]:
        return img, txt

    def img_modulation(self, ctx: DoubleContext) -> ModRequest | None:
        return None

    def txt_modulation(self, ctx: DoubleContext) -> ModRequest | None:
        """cov: text-token indices."""
        return None

    def beside_attention(self, ctx: DoubleContext, att: JointAttention) -> tuple[Tensor, Tensor] | None:
        """-> (cov (t,) image-token indices, contribution (b, t, D) added to the attention output)"""
        return None

    def after_attention(self, ctx: DoubleContext, img: Tensor) -> None:
        return None

    def after_double(self, ctx: DoubleContext, img: Tensor, txt: Tensor) -> tuple[Tensor, Tensor]:
        return img, txt

    def wrap_single_view(self, view: SingleBlockView) -> SingleBlockView:
        return view

    def single_modulation(self, ctx: SingleContext) -> ModRequest | None:
        return None

    def single_attention(self, ctx: SingleContext, q: Tensor, k: Tensor, v: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor] | None:
        """q, k, v: (b, L+N, h, c), normed and roped. -> extra keys and values (b, S, h, c) every row
        also attends to, and an additive bias (b|1, 1, L+N, L+N+S) of the rows over [own keys | extra]."""
        return None

    def after_single(self, ctx: SingleContext, x: Tensor) -> Tensor:
        return x
