"""Invariants of the InstanceAssemble pathway (WEIGHTS_COMPAT §4.3, §1.11) and its exact geometry."""
from __future__ import annotations

import random

import torch

import ia_oracle
from ia_setup import H, W, layout_of, make_setup
from refcomp_core import Controls, RefCompSession, build_state, parse_layout
from refcomp_core.hosts.diffusers_flux import patch_flux
from refcomp_core.pathways.ia_geometry import box_tokens, dense_points
from refcomp_core.pathways.instanceassemble import ia_step_active
from test_ia_oracle import ours, vanilla


def test_zero_layout_forward_and_lora_b_leave_the_second_ffn_signature(tmp_path, one_thread) -> None:
    """With layout_forward = 0 and every LoRA B = 0, a layout double block is the plain block plus one more
    (ungated by any zero) FFN pass; the single block is unchanged."""
    setup = make_setup(tmp_path)
    with torch.no_grad():
        for name, p in setup.adapter.named_parameters():
            if name.startswith("assemble_gate.") or name.endswith(".up.weight"):
                p.zero_()
    layout = layout_of()
    got = ours(setup, layout, [True, True])
    model = setup.copy_model()
    inputs = setup.inputs
    with torch.no_grad():
        hs = model.x_embedder(inputs["hidden_states"])
        temb = model.time_text_embed(inputs["timestep"] * 1000, inputs["guidance"] * 1000, inputs["pooled_projections"])
        ehs = model.context_embedder(inputs["encoder_hidden_states"])
        rope = model.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]]))
        for i, block in enumerate(model.transformer_blocks):
            ehs, hs = block(hs, ehs, temb, rope)
            if i % 3 == 0:
                _, _, sh, sc, gate = block.norm1(hs, emb=temb)
                hs = hs + gate[:, None] * block.ff(block.norm2(hs) * (1 + sc[:, None]) + sh[:, None])
        for block in model.single_transformer_blocks:
            ehs, hs = block(hs, ehs, temb, rope)
        want = model.proj_out(model.norm_out(hs, temb))
    assert float((got - vanilla(setup)).abs().max()) > 1e-2               # the extra pass is visible
    assert float((got - want).abs().max()) <= 1e-5


def test_permutation_invariant_and_duplicates_equal_one(tmp_path, one_thread) -> None:
    setup = make_setup(tmp_path)
    layout = layout_of()
    n = len(layout.instances)
    base = ours(setup, layout, [True, True])
    perm = list(reversed(range(n)))
    permuted = parse_layout({**layout.to_dict(), "instances": [layout.instances[i].to_dict() for i in perm]})
    feats = setup.features(layout)
    model = setup.copy_model()

    def run(lay, caption):
        state = build_state(setup.adapter, lay, type(feats)(caption=caption))
        session = RefCompSession(setup.adapter, state, Controls(), axes_dim=(4, 6, 6), step=0, num_steps=28)
        with torch.no_grad(), patch_flux(model, session):
            return model(**setup.inputs)[0]

    got = run(permuted, feats.caption[perm])
    assert float((got - base).abs().max()) <= 1e-5
    one = parse_layout({**layout.to_dict(), "instances": [layout.instances[0].to_dict()]})
    two = parse_layout({**layout.to_dict(), "instances": [layout.instances[0].to_dict()] * 2})
    single, double = run(one, feats.caption[:1]), run(two, feats.caption[:1].repeat(2, 1))
    assert float((single - double).abs().max()) <= 1e-5
    assert float((single - base).abs().max()) > 1e-2


def test_grid_aligned_box_loses_its_last_column_as_upstream() -> None:
    """768 px (48 x 48 latent), box x 224..544 px: upstream's float32 last sample point lands one ulp
    below x2, so the columns are 14-32 (not 14-33) and the centre is 23.5 (WEIGHTS_COMPAT §1.11)."""
    box = (224 / 768, 0.25, 544 / 768, 0.75)
    (tokens,) = box_tokens(dense_points([box], 6), 48, 48)
    assert (tokens.c0, tokens.c1) == (14, 33) and tokens.centre[1] == 23.5
    idx, centre = ia_oracle.tokens_and_centre(ia_oracle.dense_sample(box), 48, 48)
    assert torch.equal(tokens.indices(48), idx) and tokens.centre == centre


def test_membership_and_points_match_the_oracle_on_random_boxes() -> None:
    rng = random.Random(0)
    for _ in range(300):
        h, w = rng.choice([(12, 16), (48, 48), (64, 64), (40, 72)])
        px_w, px_h = w * 16, h * 16
        x0, y0 = rng.randrange(0, px_w - 16), rng.randrange(0, px_h - 16)
        box = (x0 / px_w, y0 / px_h, rng.randrange(x0 + 16, px_w + 1) / px_w, rng.randrange(y0 + 16, px_h + 1) / px_h)
        pts = dense_points([box], 6)
        assert torch.equal(pts[0], ia_oracle.dense_sample(box))
        (tokens,) = box_tokens(pts, h, w)
        idx, centre = ia_oracle.tokens_and_centre(pts[0], h, w)
        assert torch.equal(tokens.indices(w), idx) and tokens.centre == centre


def test_grounding_window_steps() -> None:
    assert [s for s in range(28) if ia_step_active(s, 28, (0.0, 0.3))] == list(range(8))
    assert [s for s in range(4) if ia_step_active(s, 4, (0.0, 0.3))] == [0]
    assert [s for s in range(50) if ia_step_active(s, 50, (0.0, 0.3))] == list(range(15))
