"""Per-token modulation at block level (DESIGN §3.1 step 2)."""
import dataclasses

import pytest
import torch

from helpers import features, randomize, tiny_adapter, tiny_flux
from refcomp_core import Controls, RefCompSession, TokenGrid, build_state, parse_layout
from refcomp_core.blocks import hotpath, run_double
from refcomp_core.pathways.token_mod import FgModulation, token_mod
from refcomp_core.hosts.diffusers_flux import double_view
from refcomp_core.rope import rope_from_ids

GRID = TokenGrid(h=8, w=8)


def _run_block(adapter, model, layout, margin):
    """Run block 0 through the core and capture the modulated image input xm (b, N, D)."""
    state = build_state(adapter, layout, features(adapter, layout, num_refs=2))
    session = RefCompSession(adapter, state, Controls(layout_window=(0, 1), mask_margin=margin),
                             axes_dim=(4, 6, 6))
    pathways = session.pathways(state, GRID, 0, (0, 1), torch.device("cpu"), double=True)
    view = double_view(model.transformer_blocks[0], heads=2)
    seen = {}
    qkv = view.img_qkv

    def capture(x):
        seen.setdefault("xm", x)
        return qkv(x)

    view = dataclasses.replace(view, img_qkv=capture)
    g = torch.Generator().manual_seed(0)
    img, txt, vec = torch.randn(1, 64, 32, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 32, generator=g)
    ids = torch.cat([torch.zeros(5, 3), torch.stack([torch.zeros(64), torch.arange(64) // 8, torch.arange(64) % 8], 1).float()])
    with torch.no_grad():
        run_double(view, img, txt, vec, rope_from_ids(ids, (4, 6, 6), 10000.0), pathways, vanilla=None)
        blk = model.transformer_blocks[0]
        base = token_mod(view.img_mod, vec, None)
        base = base.modulate(view.img_norm1(img), 0, 1)                    # the base modulation, no instances
        assert torch.allclose(base, blk.norm1(img, emb=vec)[0], atol=1e-5)  # ... which is diffusers' own
    return seen["xm"], base, next(p for p in pathways if isinstance(p, FgModulation)).index


@pytest.mark.parametrize("path", ["loop", "fused"])
def test_outside_every_box_is_exactly_base_and_inside_is_not(path: str):
    """On both hot paths: the fused one's dense [w | 1] blend must leave outside tokens bit-exact too."""
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model))
    layout = parse_layout({"version": 1, "width": 128, "height": 128, "instances": [
        {"box": [0.0, 0.0, 0.375, 0.375], "ref": 0, "alpha": 0.9},           # FG
        {"box": [0.25, 0.25, 0.5, 0.5], "ref": 1, "alpha": 0.8},             # FG, overlapping
        {"box": [0.75, 0.75, 1.0, 1.0], "ref": 1, "alpha": 0.1}]}, num_refs=2)  # BG: no modulation
    for margin in (0.0, 1.5):
        with hotpath.force(path):
            xm, base, index = _run_block(adapter, model, layout, margin)
        inside = torch.zeros(64, dtype=torch.bool)
        inside[index.mod_cov] = True
        assert torch.equal(xm[:, ~inside], base[:, ~inside])               # bit-exact base outside
        diff = (xm[:, inside] - base[:, inside]).abs().amax(dim=-1)
        assert bool((diff > 1e-4).all()), diff                              # every covered token moved
        bg_tokens = torch.tensor([r * 8 + c for r in (6, 7) for c in (6, 7)])
        assert not inside[bg_tokens].any()                                  # BG box gets no modulation
        hard_union = 3 * 3 + 2 * 2 - 1
        assert int(inside.sum()) == hard_union if margin == 0 else int(inside.sum()) > hard_union


def test_overlap_weights_are_normalized():
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model))
    layout = parse_layout({"version": 1, "width": 128, "height": 128, "instances": [
        {"box": [0.0, 0.0, 0.5, 0.5], "ref": 0, "alpha": 0.9},
        {"box": [0.25, 0.25, 0.75, 0.75], "ref": 1, "alpha": 0.9}]}, num_refs=2)
    _, _, index = _run_block(adapter, model, layout, 0.0)
    sums = index.mod_w.sum(dim=1)
    assert torch.allclose(sums, torch.ones_like(sums))                      # w_i = m_i / max(1, sum m_j)
    assert (index.mod_w == 0.5).any()                                       # the overlap splits evenly
