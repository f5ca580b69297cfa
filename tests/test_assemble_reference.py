"""Our shared-projection Assemble-Attn (DESIGN §3.1 step 4) against a plain per-instance
reference written here from the description, InstanceAssemble-style: every instance
projects its own box tokens, attends over [l_i ; box tokens], runs the out-projection
and gate itself, and the outputs are averaged per token over overlapping instances.

The reference uses the diffusers block modules directly, diffusers' own RoPE
(`FluxPosEmbed` + `apply_rotary_emb`), a dense per-token modulation and its own box
token lists. Tiny diffusers FLUX, randomized adapter, float32. Every test runs on both hot
paths (`refcomp_core.blocks.hotpath`: the CPU loop, and the CUDA fused path run here on CPU).

Axis letters: b batch, N image tokens, t box tokens, g FG instances, h heads, s sequence, c channels, D width.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from einops import einsum, rearrange
from helpers import features, randomize, random_layout, tiny_adapter, tiny_flux

from refcomp_core import Controls, RefCompSession, TokenGrid, build_state, parse_layout
from refcomp_core.blocks import hotpath, run_double
from refcomp_core.pathways.assemble import AssembleAttn
from refcomp_core.pathways.base import DoubleContext, JointAttention
from refcomp_core.pathways.token_mod import FgModulation, token_mod
from refcomp_core.geometry import soft_mask
from refcomp_core.hosts.diffusers_flux import canonical_rope, double_view

H, W, L = 6, 8, 5                    # token grid (96 x 128 px, not square on purpose) and text tokens
PX_H, PX_W = H * 16, W * 16
MARGIN, STRENGTH, BLOCK = 1.5, 0.7, 1


def _layout(boxes_px: list[tuple[int, int, int, int]], kinds: str):
    """kinds: one letter per box, F = FG, B = BG with a reference, C = caption-only."""
    inst = []
    for (x0, y0, x1, y1), kind in zip(boxes_px, kinds):
        inst.append({"box": [x0 / PX_W, y0 / PX_H, x1 / PX_W, y1 / PX_H], "caption": "thing",
                     "ref": None if kind == "C" else len(inst) % 3, "alpha": {"F": 0.9, "B": 0.2, "C": None}[kind]})
    return parse_layout({"version": 1, "width": PX_W, "height": PX_H, "instances": inst}, num_refs=3)


CASES = {
    "overlapping": lambda: _layout([(0, 0, 80, 64), (32, 16, 128, 96), (16, 32, 96, 80), (48, 0, 64, 96)], "FBCF"),
    "one_token": lambda: _layout([(0, 0, 16, 16), (112, 80, 128, 96), (32, 16, 96, 80), (48, 32, 64, 48),
                                  (64, 48, 80, 64)], "FBBFC"),
    "full_image": lambda: _layout([(0, 0, PX_W, PX_H), (32, 16, 96, 64)], "FB"),
    "fifty": lambda: random_layout(50, seed=5, width=PX_W, height=PX_H),
}


@pytest.fixture(autouse=True, params=["loop", "fused"])
def hot_path(request: pytest.FixtureRequest):
    with hotpath.force(request.param):
        yield request.param


def _tokens_in_box(box: tuple[float, float, float, float]) -> torch.Tensor:
    """Tokens whose centre lies in the box (row-major), own implementation.  -> (t,)"""
    x0, y0, x1, y1 = box
    return torch.tensor([r * W + c for r in range(H) for c in range(W)
                         if x0 * W <= c + 0.5 <= x1 * W and y0 * H <= r + 0.5 <= y1 * H], dtype=torch.long)


def _reference(model, adapter, layout, state, img, vec, feedback, *, average: bool = True,
               centre_shift: float = 0.0) -> torch.Tensor:
    """The per-instance branch output (b, N, D), zero on tokens outside every box."""
    block = model.transformer_blocks[BLOCK]
    attn, lora = block.attn, adapter.lora[str(BLOCK)].deltas
    heads, (b, n_img, d) = attn.heads, img.shape
    silu_lin = lambda linear, x: linear(F.silu(x))                                   # noqa: E731
    boxes = [inst.box for inst in layout.instances]
    fg = [i for i in range(len(boxes)) if state.is_fg[i]]
    # per-token image modulation, dense over all tokens
    base_img, base_txt = silu_lin(block.norm1.linear, vec), silu_lin(block.norm1_context.linear, vec)  # (b, 6D)
    params = base_img[:, None].expand(b, n_img, 6 * d)
    txt_mods = {}
    if fg:
        s = state.shared[None] + feedback                                           # (b, g, D)
        off = s + adapter.modulation.per_block[BLOCK](s)
        y = vec[:, None] + STRENGTH * state.alpha[fg][None, :, None] * off           # (b, g, D)
        masks = torch.stack([soft_mask(boxes[i], TokenGrid(H, W), MARGIN) for i in fg], dim=-1)   # (N, g)
        w = masks / masks.sum(-1, keepdim=True).clamp(min=1)
        params = params + einsum(w, silu_lin(block.norm1.linear, y) - base_img[:, None], "N g, b g c -> b N c")
        ty = silu_lin(block.norm1_context.linear, y)                                 # (b, g, 6D)
        txt_mods = {i: ty[:, j] for j, i in enumerate(fg)}
    xm = block.norm1.norm(img) * (1 + params[..., d:2 * d]) + params[..., :d]
    proj = lambda base, name, z: base(z) + lora[name](z) if name in lora else base(z)  # noqa: E731
    heads_of = lambda z: rearrange(z, "b s (h c) -> b h s c", h=heads)                # noqa: E731

    acc, count = torch.zeros_like(img), torch.zeros(n_img)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        tok = _tokens_in_box(boxes[i])
        ids = torch.zeros(1 + len(tok), 3)
        ids[0, 1], ids[0, 2] = (y0 + y1) / 2 * H - 0.5 + centre_shift, (x0 + x1) / 2 * W - 0.5
        ids[1:, 1], ids[1:, 2] = (tok // W).float(), (tok % W).float()
        cos, sin = model.pos_embed(ids)
        mods = txt_mods.get(i, base_txt)                                             # (b, 6D)
        li = block.norm1_context.norm(state.layout_tokens[i].expand(b, 1, d)) * (1 + mods[:, None, d:2 * d]) \
            + mods[:, None, :d]                                                      # (b, 1, D)
        x = xm[:, tok]                                                               # (b, t, D)
        q = torch.cat([attn.norm_added_q(heads_of(proj(attn.add_q_proj, "txt_q", li))),
                       attn.norm_q(heads_of(proj(attn.to_q, "img_q", x)))], dim=2)   # (b, h, 1+t, c)
        k = torch.cat([attn.norm_added_k(heads_of(proj(attn.add_k_proj, "txt_k", li))),
                       attn.norm_k(heads_of(proj(attn.to_k, "img_k", x)))], dim=2)
        v = torch.cat([heads_of(proj(attn.add_v_proj, "txt_v", li)), heads_of(proj(attn.to_v, "img_v", x))], dim=2)
        q, k = apply_rotary_emb(q, (cos, sin)), apply_rotary_emb(k, (cos, sin))
        o = rearrange(F.scaled_dot_product_attention(q, k, v), "b h s c -> b s (h c)")[:, 1:]   # (b, t, D)
        out = adapter.assemble_gate[str(BLOCK)](proj(attn.to_out[0], "img_out", o)) * STRENGTH
        acc[:, tok] += out
        count[tok] += 1
    return acc / count.clamp(min=1)[None, :, None] if average else acc


def _setup(case: str):
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model), seed=2)
    layout = CASES[case]()
    with torch.no_grad():
        state = build_state(adapter, layout, features(adapter, layout))
    g = torch.Generator().manual_seed(7)
    d = adapter.config.hidden_size
    img, txt = torch.randn(2, H * W, d, generator=g), torch.randn(2, L, d, generator=g)
    vec = torch.randn(2, d, generator=g)
    feedback = torch.randn(2, state.n_fg, d, generator=g) * 0.3
    session = RefCompSession(adapter, state, Controls(strength=STRENGTH, layout_window=(0, 1), mask_margin=MARGIN),
                             axes_dim=tuple(model.config.axes_dims_rope))
    pathways = session.pathways(state, TokenGrid(H, W), BLOCK, (0, 2), torch.device("cpu"), double=True)
    for p in pathways:
        if isinstance(p, FgModulation):
            p.feedback = feedback
    ids = torch.zeros(L + H * W, 3)
    ids[L:, 1], ids[L:, 2] = (torch.arange(H * W) // W).float(), (torch.arange(H * W) % W).float()
    rope = canonical_rope(model.pos_embed(ids))
    return model, adapter, layout, state, pathways, rope, (img, txt, vec, feedback)


def _assemble_of(pathways) -> AssembleAttn:
    return next(p for p in pathways if isinstance(p, AssembleAttn))


def _ours(model, pathways, rope, img, vec) -> torch.Tensor:
    """The Assemble-Attn pathway on its own, fed as the runner feeds it.  -> (b, N, D), zero outside the boxes."""
    view = double_view(model.transformer_blocks[BLOCK], model.config.num_attention_heads)
    ctx = DoubleContext(view=view, vec=vec, rope=rope, txt_len=L)
    mod = next((p for p in pathways if isinstance(p, FgModulation)), None)
    img_mod = token_mod(view.img_mod, vec, mod.img_modulation(ctx) if mod else None)
    ctx.txt_base = token_mod(view.txt_mod, vec, None).base
    xm = img_mod.modulate(view.img_norm1(img), 0, 1)
    cov, out = _assemble_of(pathways).beside_attention(ctx, JointAttention(xm, *view.img_qkv(xm)))
    full = torch.zeros_like(img)
    full[:, cov] = out
    return full


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("case", list(CASES))
def test_assemble_matches_per_instance_reference(case: str) -> None:
    model, adapter, layout, state, pathways, rope, (img, _, vec, fb) = _setup(case)
    with torch.no_grad():
        ref = _reference(model, adapter, layout, state, img, vec, fb)
        ours = _ours(model, pathways, rope, img, vec)
    toks = [_tokens_in_box(i.box) for i in layout.instances]
    covered, depth = torch.cat(toks).unique(return_counts=True)
    assert torch.equal(_assemble_of(pathways).index.asm_cov, covered)
    assert ref[:, covered].abs().amin(dim=-1).gt(0).all() and ref.abs().max() > 1e-2   # the branch is active
    sizes = [len(t) for t in toks]
    exercised = {"overlapping": int(depth.max()) >= 3, "one_token": sizes.count(1) == 4,
                 "full_image": len(covered) == H * W, "fifty": len(sizes) == 50 and 0 < state.n_fg < 50}
    assert exercised[case], f"the {case} layout does not exercise what it is named for"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("case", ["overlapping", "fifty"])
def test_double_block_runs_the_reference_branch(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the block runner: swapping our branch for the reference changes nothing."""
    model, adapter, layout, state, pathways, rope, (img, txt, vec, fb) = _setup(case)
    view = double_view(model.transformer_blocks[BLOCK], model.config.num_attention_heads)
    cov = _assemble_of(pathways).index.asm_cov
    vanilla = lambda: pytest.fail("the runner must run the block itself")   # noqa: E731
    with torch.no_grad():
        ref = _reference(model, adapter, layout, state, img, vec, fb)
        ours = run_double(view, img, txt, vec, rope, pathways, vanilla)
        monkeypatch.setattr(AssembleAttn, "beside_attention", lambda self, ctx, att: (cov, ref[:, cov]))
        swapped = run_double(view, img, txt, vec, rope, pathways, vanilla)
        off = run_double(view, img, txt, vec, rope, [p for p in pathways if not isinstance(p, AssembleAttn)],
                         vanilla)
    assert not _close(off[0], ours[0])                                   # the branch matters to the output
    for a, b in zip(ours[:2], swapped[:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("perturb", [dict(average=False), dict(centre_shift=1.0)])
def test_reference_comparison_can_fail(perturb: dict) -> None:
    """A reference that sums instead of averaging, or puts l_i one row off its box centre, must not match."""
    model, adapter, layout, state, pathways, rope, (img, _, vec, fb) = _setup("overlapping")
    with torch.no_grad():
        bad = _reference(model, adapter, layout, state, img, vec, fb, **perturb)
        ours = _ours(model, pathways, rope, img, vec)
    assert not _close(ours, bad)
