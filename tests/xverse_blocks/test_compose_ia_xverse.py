"""InstanceAssemble's layout pathway and XVerse's identity pathway on one model (diffusers host):
the composition against the two naive oracles composed the same way (XVerse's block, then
InstanceAssemble's branch on its output, each method with its own LoRA only)."""
from __future__ import annotations

import copy

import torch

import ia_oracle
import xverse_oracle
from ia_setup import attach_layout_forward, layout_of, make_setup
from refcomp_core import Controls, RefCompSession, build_state
from refcomp_core.hosts.diffusers_flux import patch_flux
from refcomp_core.pathways.xverse import XVerseScales, XVerseState, xverse_loras
from refcomp_core.rope import rope_from_ids
from refcomp_core.session import XVerseRun

H, W, REFS, PER = 12, 16, 2, 4


def test_composition_matches_the_composed_oracles(tmp_path, one_thread) -> None:
    ia = make_setup(tmp_path, batch=1)
    model = ia.model
    d = model.config.num_attention_heads * model.config.attention_head_dim
    L = ia.inputs["encoder_hidden_states"].shape[1]
    nd = len(model.transformer_blocks)
    g = torch.Generator().manual_seed(11)
    mods = {"x_embedder": (model.config.in_channels, d)}
    for b in range(nd):
        mods.update({f"transformer_blocks.{b}.attn.{n}": (d, d) for n in ("to_q", "add_k_proj", "to_add_out")})
        mods[f"transformer_blocks.{b}.norm1_context.linear"] = (d, 6 * d)
    for b in range(len(model.single_transformer_blocks)):
        mods.update({f"single_transformer_blocks.{b}.attn.to_v": (d, d),
                     f"single_transformer_blocks.{b}.proj_out": (5 * d, d)})
    lora = {m: (torch.randn(2, i, generator=g) * 0.2, torch.randn(o, 2, generator=g) * 0.2) for m, (i, o) in mods.items()}
    mask = torch.zeros(L, dtype=torch.bool)
    mask[[1, 3]] = True
    text_cond = torch.zeros(L, REFS, dtype=torch.bool)
    text_cond[1, 0] = text_cond[3, 1] = True
    ref_ids = torch.stack([torch.tensor([0.0, t // 2 - 2 * (j + 1), t % 2 - 2 * (j + 1)]) for j in range(REFS)
                           for t in range(PER)])
    xv = dict(delta_shared=torch.randn(L, d, generator=g) * mask[:, None], mask=mask, text_cond=text_cond,
              delta_block=torch.randn(nd, L, d, generator=g) * mask[None, :, None],
              ref_latents=torch.randn(REFS * PER, model.config.in_channels, generator=g), ref_ids=ref_ids,
              lam=torch.tensor([3.0, 5.0]))
    layout = layout_of()

    # ours: one session, both pathways
    state = build_state(ia.adapter, layout, ia.features(layout))
    xstate = XVerseState(delta_shared=xv["delta_shared"], delta_block=xv["delta_block"], bound=torch.nonzero(mask)[:, 0],
                         text_cond=text_cond, ref_latents=xv["ref_latents"],
                         ref_rope=rope_from_ids(ref_ids, tuple(model.config.axes_dims_rope), 10000.0), lam=xv["lam"],
                         tokens_per_ref=PER)
    run = XVerseRun(state=xstate, loras=xverse_loras({m: (a, b, 1.0) for m, (a, b) in lora.items()}),
                    scales=XVerseScales())
    session = RefCompSession(ia.adapter, state, Controls(), axes_dim=tuple(model.config.axes_dims_rope), step=0,
                             num_steps=28, xverse=run, t0=1.4)
    ours_model = copy.deepcopy(model)
    with torch.no_grad(), patch_flux(ours_model, session):
        got = ours_model(**ia.inputs)[0]

    # the oracles composed: XVerse's blocks, then IA's branch after IA's layout blocks
    oracle = copy.deepcopy(model)
    ia_oracle.load_peft(oracle, str(ia.lora_file))
    xverse_oracle.load_peft(oracle, {f"transformer.{m}.lora_{x}.weight": t.clone() for m, (a, b) in lora.items()
                                     for x, t in (("A", a), ("B", b))})
    oracle.set_adapters(["ia", "xv"])
    for m in oracle.modules():
        if hasattr(m, "set_scale"):
            m.set_scale("ia", 0.0)
            m.set_scale("xv", 0.0)
    attach_layout_forward(oracle, ia.layout_weights)
    boxes = [i.box for i in layout.instances]
    points = torch.stack([ia_oracle.dense_sample(b) for b in boxes])
    per_box = [ia_oracle.tokens_and_centre(p, H, W) for p in points]
    img_ids = ia.inputs["img_ids"]
    ropes = [oracle.pos_embed(torch.cat([torch.tensor([[0.0, c[0], c[1]]]), img_ids[idx]])) for idx, c in per_box]
    lam = [ia_oracle.layout_net(ia.layout_weights, points, ia.features(layout).caption)[None]]

    def after_double(i, block, hs, temb):
        if i % 3:
            return hs
        hs, lam[0] = ia_oracle._double_branch(block, hs, lam[0], temb, per_box, ropes, [True], 1.0)
        return hs

    def after_single(i, block, hs, temb):
        return ia_oracle._single_branch(block, hs, lam[0], temb, per_box, ropes, [True], 1.0) if i == 0 else hs

    with torch.no_grad():
        want = xverse_oracle.forward(oracle, ia.inputs, xv, after_double=after_double, after_single=after_single)
        xv_only = xverse_oracle.forward(oracle, ia.inputs, xv)
    assert float((want - xv_only).abs().max()) > 1e-2                        # the layout branch acts
    assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())
