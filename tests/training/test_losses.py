"""Each loss tested for what it means (DESIGN §6), not only that it runs."""
from __future__ import annotations

import pytest
import torch

from refcomp_core import TokenGrid
from training import losses as L
from training.config import LossConfig


def test_sigma_sampling_follows_flux_shift():
    cfg = LossConfig()
    g = torch.Generator().manual_seed(0)
    small = L.sample_sigmas(4000, 256, cfg, g)
    large = L.sample_sigmas(4000, 4096, cfg, g)
    assert bool((small > 0).all() and (small < 1).all())
    # mu(256) = 0.5 and mu(4096) = 1.15: bigger images are trained at noisier sigmas
    assert abs(L.flux_shift_mu(256, cfg) - 0.5) < 1e-9 and abs(L.flux_shift_mu(4096, cfg) - 1.15) < 1e-9
    assert float(large.median()) > float(small.median()) + 0.1
    # with the shift off, logit-normal(0, 1) has median 0.5
    plain = L.sample_sigmas(4000, 4096, LossConfig(shift=False), g)
    assert abs(float(plain.median()) - 0.5) < 0.05


def test_flow_loss_is_zero_exactly_for_the_velocity():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 8, 4, generator=g), torch.randn(2, 8, 4, generator=g)
    sigma = torch.tensor([0.2, 0.9])
    x_t = L.noisy_latents(x0, noise, sigma)
    assert torch.allclose(L.noisy_latents(x0, noise, torch.zeros(2)), x0)
    assert torch.allclose(L.noisy_latents(x0, noise, torch.ones(2)), noise)
    v = noise - x0
    assert float(L.flow_loss(v, x0, noise)) == 0.0
    assert float(L.flow_loss(v + 0.1, x0, noise)) > 0.0
    assert torch.allclose(L.predicted_x0(x_t, v, sigma), x0, atol=1e-6)      # x̂0 recovers x0 from the true v


def test_identity_loss_means_one_minus_cosine_weighted_by_detached_alpha():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(3, 6, generator=g)
    alpha = torch.tensor([0.9, 0.6, 0.7], requires_grad=True)
    assert float(L.identity_loss(ref.clone(), ref, alpha)) < 1e-6             # same identity -> no loss
    crop = (-ref).clone().requires_grad_(True)                                # opposite -> 1 - cos = 2
    loss = L.identity_loss(crop, ref, alpha)
    assert abs(float(loss.detach()) - 2 * float(alpha.detach().mean())) < 1e-5
    loss.backward()
    assert alpha.grad is None                                                 # the weight never trains alpha
    assert crop.grad is not None and float(crop.grad.abs().sum()) > 0


def test_box_alignment_gradient_moves_the_soft_centroid_toward_the_box():
    g = torch.Generator().manual_seed(3)
    xy = L.patch_centres((4, 4))
    ref = torch.randn(1, 8, generator=g)
    patches = torch.randn(1, 16, 8, generator=g).requires_grad_(True)
    centre = torch.tensor([[0.8, 0.2]])
    alpha = torch.tensor([0.3], requires_grad=True)
    before = (L.soft_centroid(ref, patches, xy, 0.1) - centre).abs().sum()
    loss = L.box_alignment_loss(ref, patches, xy, centre, alpha, 0.1)
    assert abs(float(loss.detach()) - 0.7 * float(before.detach())) < 1e-5   # weight (1 - alpha)
    loss.backward()
    assert alpha.grad is None
    with torch.no_grad():
        stepped = patches - 0.5 * patches.grad
    after = (L.soft_centroid(ref, stepped, xy, 0.1) - centre).abs().sum()
    assert float(after) < float(before.detach())
    # a patch map that matches the ref only at the box centre puts the centroid there
    peaked = (-ref).expand(1, 16, 8).clone()
    k = 1 * 4 + 3                                                             # row 1, col 3
    peaked[0, k] = ref[0]
    c = L.soft_centroid(ref, peaked, xy, 0.01)
    assert torch.allclose(c, xy[k][None], atol=1e-3)


def test_patch_centres_are_row_major():
    xy = L.patch_centres((2, 3))
    want = torch.tensor([[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25], [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]])
    assert torch.allclose(xy, want)


def test_region_mask_is_dropped_boxes_minus_kept_boxes():
    grid = TokenGrid(4, 4)
    left, top = (0.0, 0.0, 0.5, 1.0), (0.0, 0.0, 1.0, 0.5)
    mask = L.region_mask([left], [top], grid).reshape(4, 4)
    assert mask[:2].sum() == 0                                                # owned by the kept box
    assert mask[2:, :2].sum() == 4 and mask[2:, 2:].sum() == 0
    assert L.region_mask([], [left, top], grid).sum() == 0


def test_region_preservation_only_looks_inside_the_mask_and_is_zero_without_drops():
    g = torch.Generator().manual_seed(4)
    vanilla = torch.randn(1, 16, 3, generator=g)
    mask = torch.zeros(1, 16)
    mask[0, :4] = 1
    pred = vanilla.clone()
    pred[0, 4:] += 5.0                                                        # outside the dropped region: free
    pred.requires_grad_(True)
    assert float(L.region_preservation_loss(pred, vanilla, mask).detach()) == 0.0
    leaked = vanilla.clone()
    leaked[0, :4] += 1.0
    leaked.requires_grad_(True)
    loss = L.region_preservation_loss(leaked, vanilla, mask)
    assert abs(float(loss.detach()) - 1.0) < 1e-6                                     # mean squared error inside
    loss.backward()
    assert float(leaked.grad[0, 4:].abs().sum()) == 0 and float(leaked.grad[0, :4].abs().sum()) > 0
    nothing = L.region_preservation_loss(leaked, vanilla, torch.zeros(1, 16))
    assert float(nothing.detach()) == 0.0


def test_route_loss_is_binary_cross_entropy_toward_the_depth_label():
    alpha = torch.tensor([0.9, 0.2, 0.5])
    fg = torch.tensor([1.0, 0.0, 1.0])
    expected = -(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(0.8)) + torch.log(torch.tensor(0.5))) / 3
    assert torch.allclose(L.route_loss(alpha, fg), expected)
    assert L.route_loss(torch.zeros(0), torch.zeros(0)) == 0


def test_a_soft_fg_target_is_where_the_route_loss_is_flat():
    """With fg_target 0.7, fg α is pulled to 0.7 (not 1) and bg α still to 0."""
    alpha = torch.tensor([0.7, 0.95, 0.3], requires_grad=True)
    L.route_loss(alpha, torch.tensor([1.0, 1.0, 0.0]), fg_target=0.7).backward()
    assert abs(float(alpha.grad[0])) < 1e-6 and float(alpha.grad[1]) > 0 and float(alpha.grad[2]) > 0
    from training.config import LossConfig
    with pytest.raises(ValueError, match="route_fg_target"):
        LossConfig(route_fg_target=0.5)


def test_route_prior_splits_alpha_by_depth_and_ignores_overrides_and_caption_only():
    """A few Adam steps on the routing prior alone move fg-labelled α above 0.5 and
    mg/bg-labelled α below it; overridden and caption-only instances are not in the term."""
    from types import SimpleNamespace

    from helpers import features, tiny_adapter, tiny_flux
    from refcomp_core import build_state, parse_layout
    from training.step import routed_alpha

    box = [0.1, 0.1, 0.6, 0.6]
    rows = [{"box": box, "ref": 0, "depth": "fg"}, {"box": box, "ref": 1, "depth": "bg"},
            {"box": box, "ref": 2, "depth": "mg"}, {"box": box, "ref": 1, "depth": "fg"},
            {"box": box, "ref": 0, "depth": "bg", "alpha": 0.9}, {"box": box, "ref": None, "depth": "fg"}]
    layout = parse_layout({"version": 1, "width": 64, "height": 64, "instances": rows}, num_refs=3)
    adapter = tiny_adapter(tiny_flux())
    feats = features(adapter, layout)
    batch = SimpleNamespace(layouts=[layout])
    alpha, is_fg = routed_alpha(batch, [build_state(adapter, layout, feats)], torch.device("cpu"))
    assert is_fg.tolist() == [1.0, 0.0, 0.0, 1.0] and torch.allclose(alpha, torch.full((4,), 0.5))
    opt = torch.optim.Adam(adapter.alpha.parameters(), lr=1e-2)
    for _ in range(30):
        loss = L.route_loss(*routed_alpha(batch, [build_state(adapter, layout, feats)], torch.device("cpu")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    alpha, _ = routed_alpha(batch, [build_state(adapter, layout, feats)], torch.device("cpu"))
    assert alpha[0] > 0.5 and alpha[3] > 0.5 and alpha[1] < 0.5 and alpha[2] < 0.5
    full = build_state(adapter, layout, feats).alpha.detach()
    assert torch.isclose(full[4], torch.tensor(0.9)) and full[5] == 0.0                # override and caption-only untouched
