"""The two hot paths (`refcomp_core.blocks.hotpath`) compute the same thing (issue 13).

`loop` is what CPUs run; `fused` is what CUDA runs (one flex_attention call with a document block
mask, dense blends, the FG box means as a matmul). Here the fused path runs on CPU (flex_attention
eager: the same math as the compiled CUDA kernel) and must match the loop path, a dense masked
reference written here, and (in test_assemble_reference.py, run on both paths) the per-instance
reference. Tiny random diffusers FLUX, float32.

Axis letters: b batch, S packed rows, t covered tokens, h heads, c head channels.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from helpers import features, flux_inputs, random_layout, randomize, tiny_adapter, tiny_flux

from refcomp_core import Controls, RefCompAdapter, RefCompSession, TokenGrid, build_state, parse_layout
from refcomp_core.blocks import hotpath
from refcomp_core.blocks.packed import BLOCK, Packing, packed_attention
from refcomp_core.config import IA_DOUBLE_SITES, IA_SINGLE_SITES, IAConfig
from refcomp_core.hosts.diffusers_flux import config_for, patch_flux
from refcomp_core.rope import Rope

OPEN = Controls(layout_window=(0.0, 1.0), modulation_window=(0.0, 1.0), mask_margin=1.5)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def _positions(seed: int, t: int = 40, boxes: int = 9) -> list[torch.Tensor]:
    """Random boxes as sorted positions in a covered set of t tokens, overlapping, one of one token."""
    g = torch.Generator().manual_seed(seed)
    pos = [torch.randperm(t, generator=g)[:int(torch.randint(1, t, (1,), generator=g))].sort().values
           for _ in range(boxes - 1)]
    pos.append(torch.tensor([3]))
    covered = torch.cat(pos).unique()
    remap = torch.full((t,), -1, dtype=torch.long)
    remap[covered] = torch.arange(covered.numel())
    return [remap[p] for p in pos]                                          # every covered token in some box


def _dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """One SDPA over all packed rows with a block-diagonal boolean mask.  (b, S, h, c) -> (b, S, h, c)"""
    mask = doc[:, None] == doc[None, :]                                     # (S, S)
    out = F.scaled_dot_product_attention(*(rearrange(a, "b s h c -> b h s c") for a in (q, k, v)), attn_mask=mask)
    return rearrange(out, "b h s c -> b s h c")


def test_default_path_follows_the_device_and_force_overrides_it() -> None:
    assert not hotpath.fused(torch.device("cpu"))
    assert hotpath.fused(torch.device("cuda")) == hotpath.has_flex_attention()
    with hotpath.force("fused"):
        assert hotpath.fused(torch.device("cpu"))
        with hotpath.force("loop"):
            assert not hotpath.fused(torch.device("cuda"))
        assert hotpath.fused(torch.device("cpu"))
    assert not hotpath.fused(torch.device("cpu"))
    with pytest.raises(ValueError, match="hot path"):
        with hotpath.force("fast"):
            pass


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_attention_paths_match_a_dense_masked_reference(seed: int) -> None:
    pos = _positions(seed)
    t = int(torch.cat(pos).max()) + 1
    p = Packing.build(pos, t)
    n, sizes = len(pos), [int(x.numel()) for x in pos]
    assert p.length % BLOCK == 0 and p.length >= n + sum(sizes)
    assert [stop - start for start, stop in p.bounds] == [1 + s for s in sizes]
    g = torch.Generator().manual_seed(10 + seed)
    inst = torch.randn(2, n, 2, 8, generator=g)
    tok = [torch.randn(2, t, 2, 8, generator=g) for _ in range(3)]
    q, k, v = (p.pack(inst * (j + 1), x) for j, x in enumerate(tok))
    assert torch.equal(q[:, p.inst_rows], inst)
    for i, (start, stop) in enumerate(p.bounds):                            # segment i = [l_i ; box i tokens]
        assert torch.equal(k[:, start + 1:stop], tok[1][:, pos[i]])
    ref = _dense_reference(q, k, v, p.doc)
    live = p.doc >= 0
    outs = {}
    for path in ("loop", "fused"):
        with hotpath.force(path):
            outs[path] = packed_attention(q, k, v, p)
        _close(outs[path][:, live], ref[:, live])
    unmasked = F.scaled_dot_product_attention(*(rearrange(a, "b s h c -> b h s c") for a in (q, k, v)))
    assert not torch.allclose(rearrange(unmasked, "b h s c -> b s h c")[:, live], ref[:, live], atol=1e-3)

    inst_out, mean = p.unpack(outs["fused"])
    want = torch.zeros(2, t, 2, 8)
    count = torch.zeros(t)
    for i, (start, stop) in enumerate(p.bounds):
        want[:, pos[i]] += ref[:, start + 1:stop]
        count[pos[i]] += 1
    _close(mean, want / count[None, :, None, None])
    _close(inst_out, ref[:, p.inst_rows])


def _layout(n: int, seed: int):
    """n random boxes with references, every other one forced FG by its alpha override."""
    layout = random_layout(n, seed=seed, caption_only=0.0)
    return parse_layout({**layout.to_dict(), "instances": [{**inst.to_dict(), "alpha": 0.8 if i % 2 else 0.2}
                                                           for i, inst in enumerate(layout.instances)]},
                        max_instances=max(50, n))


def _run(model, session, inputs, path: str) -> torch.Tensor:
    with hotpath.force(path), patch_flux(model, session):
        return model(**inputs)[0]


@torch.no_grad()
@pytest.mark.parametrize("n", [4, 50])
def test_whole_transformer_paths_agree(n: int) -> None:
    """Double blocks (modulation, Assemble-Attn, bridge) and single blocks, two rows."""
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model), scale=0.2)
    layout = _layout(n, seed=n)
    state = build_state(adapter, layout, features(adapter, layout))
    assert state.n_fg == n // 2
    inputs = flux_inputs(model, batch=2)
    vanilla = model(**inputs)[0]
    loop = _run(model, RefCompSession(adapter, state, OPEN), inputs, "loop")
    fused = _run(model, RefCompSession(adapter, state, OPEN), inputs, "fused")
    assert (loop - vanilla).abs().max() > 1e-2                               # the pathways act
    _close(fused, loop)


def _ia_adapter(model) -> RefCompAdapter:
    lora = {f"0.{s}": (4, 0.5) for s in IA_DOUBLE_SITES} | {f"s0.{s}": (4, 0.5) for s in IA_SINGLE_SITES}
    ia = IAConfig(double_blocks=(0,), single_blocks=(0,), mlp_hidden=4 * model.inner_dim, lora=lora, text_dim=8,
                  dense_k=2, fourier_freqs=3, coord_dtype="float32")
    cfg = config_for(model, layout_pathway="instanceassemble", identity=False, instanceassemble=ia, clip_dim=12,
                     dino_dim=10, text_dim=8, visual_dim=10)
    torch.manual_seed(0)
    return randomize(RefCompAdapter(cfg).eval(), scale=0.2)


@torch.no_grad()
def test_instanceassemble_pathway_paths_agree() -> None:
    """InstanceAssemble's branch (after a double and a single block) shares the packed attention."""
    model = tiny_flux()
    adapter = _ia_adapter(model)
    layout = random_layout(7, seed=2)
    state = build_state(adapter, layout, features(adapter, layout))
    inputs = flux_inputs(model, batch=1)
    vanilla = model(**inputs)[0]
    loop = _run(model, RefCompSession(adapter, state, OPEN), inputs, "loop")
    fused = _run(model, RefCompSession(adapter, state, OPEN), inputs, "fused")
    assert (loop - vanilla).abs().max() > 1e-2
    _close(fused, loop)


def test_gradients_agree_on_both_paths() -> None:
    """Training runs the fused path on CUDA: the adapter's gradients match the loop path's."""
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model), scale=0.2).train()
    layout = _layout(12, seed=4)
    inputs = flux_inputs(model, batch=1)
    grads = {}
    for path in ("loop", "fused"):
        adapter.zero_grad(set_to_none=True)
        state = build_state(adapter, layout, features(adapter, layout))
        out = _run(model, RefCompSession(adapter, state, OPEN), inputs, path)
        out.square().mean().backward()
        grads[path] = {name: p.grad.clone() for name, p in adapter.named_parameters() if p.grad is not None}
    assert grads["loop"].keys() == grads["fused"].keys()
    assert any(k.startswith("lora.") for k in grads["loop"]) and any("bridge" in k for k in grads["loop"])
    for name, g in grads["loop"].items():
        _close(grads["fused"][name], g, rel=1e-4)


def test_covered_rope_is_cached_per_rope_tensor() -> None:
    model = tiny_flux()
    adapter = tiny_adapter(model)
    layout = random_layout(5, seed=1)
    state = build_state(adapter, layout, features(adapter, layout))
    index = state.grid(TokenGrid(8, 8), 1.0, torch.device("cpu"))
    rope = Rope(torch.randn(1, 70, 4), torch.randn(1, 70, 4))
    a = index.covered_rope(rope, 6)
    assert index.covered_rope(Rope(rope.cos[:, :], rope.sin[:, :]), 6) is a      # a fresh view of the same rope
    assert torch.equal(a.cos, rope.cos[:, index.asm_cov + 6])
    other = index.covered_rope(rope, 5)
    assert torch.equal(other.cos, rope.cos[:, index.asm_cov + 5])
    moved = Rope(rope.cos + 1, rope.sin)
    assert torch.equal(index.covered_rope(moved, 5).cos, moved.cos[:, index.asm_cov + 5])
