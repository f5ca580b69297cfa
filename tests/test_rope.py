"""refcomp_core.rope: the canonical rope against diffusers' own rotation, and the fused
complex form against the plain pair arithmetic it replaces."""
from __future__ import annotations

import torch
from einops import rearrange

from refcomp_core.rope import Rope, apply_rope, rope_from_ids


def _pairwise(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """The textbook form: (x0 cos − x1 sin, x0 sin + x1 cos) on interleaved pairs."""
    pairs = rearrange(x.float(), "b l h (d two) -> b l h d two", two=2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = rope.cos[:, :, None], rope.sin[:, :, None]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return rearrange(out, "b l h d two -> b l h (d two)").to(x.dtype)


def test_fused_rotation_is_bitwise_the_pair_arithmetic_and_keeps_dtype_and_grad():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 16, generator=g)
    rope = Rope(torch.randn(2, 7, 8, generator=g), torch.randn(2, 7, 8, generator=g))
    assert torch.equal(apply_rope(x, rope), _pairwise(x, rope))
    half = x.to(torch.bfloat16)
    assert apply_rope(half, rope).dtype == torch.bfloat16
    assert torch.equal(apply_rope(half, rope), _pairwise(half, rope))
    one = Rope(rope.cos[:1], rope.sin[:1])                                # a batch-1 rope broadcasts
    assert torch.equal(apply_rope(x, one), _pairwise(x, one))
    leaf = x.clone().requires_grad_(True)
    apply_rope(leaf, rope).square().sum().backward()
    ref = x.clone().requires_grad_(True)
    _pairwise(ref, rope).square().sum().backward()
    assert torch.allclose(leaf.grad, ref.grad, atol=1e-5)


def test_rope_matches_diffusers_flux_rotation():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = torch.tensor([[0.0, r, c] for r in range(3) for c in range(4)])
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=[4, 6, 6])(ids)
    x = torch.randn(1, 2, ids.shape[0], 16)                                # diffusers: (b, h, l, c)
    want = apply_rotary_emb(x, (cos, sin))
    got = apply_rope(rearrange(x, "b h l c -> b l h c"), rope_from_ids(ids, (4, 6, 6), 10000.0))
    assert torch.allclose(rearrange(got, "b l h c -> b h l c"), want, atol=1e-5)
