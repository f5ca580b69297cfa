"""Init rules of the adapter modules (DESIGN §2)."""
import torch

from helpers import features, flux_inputs, random_layout, tiny_adapter, tiny_flux
from refcomp_core import Controls, RefCompConfig, RefCompSession, build_state, parse_layout
from refcomp_core.adapter import RefCompAdapter
from refcomp_core.hosts.diffusers_flux import patch_flux


def test_alpha_is_half_for_any_input_at_init():
    adapter = tiny_adapter(tiny_flux())
    clip = torch.randn(32, adapter.config.clip_dim) * 10
    depth = torch.nn.functional.one_hot(torch.randint(0, 3, (32,)), 3).float()
    alpha = adapter.alpha(clip, torch.rand(32), depth)
    assert torch.equal(alpha, torch.full((32,), 0.5))


def test_caption_only_alpha_zero_and_manual_override_wins():
    adapter = tiny_adapter(tiny_flux())
    with torch.no_grad():
        adapter.alpha.net[2].bias.fill_(5.0)                              # predictor now says ~0.99
    layout = parse_layout({"version": 1, "width": 64, "height": 64, "instances": [
        {"box": [0, 0, 0.5, 0.5], "ref": None, "caption": "a cat"},
        {"box": [0, 0, 0.5, 0.5], "ref": 0, "alpha": 0.2},
        {"box": [0, 0, 0.5, 0.5], "ref": 0},
        {"box": [0, 0, 0.5, 0.5], "ref": None, "alpha": 0.9}]}, num_refs=1)
    state = build_state(adapter, layout, features(adapter, layout, num_refs=1))
    assert state.alpha[0] == 0.0 and state.alpha[3] == 0.0             # caption-only: nothing carries identity
    assert abs(float(state.alpha[1].detach()) - 0.2) < 1e-7                      # manual override
    assert float(state.alpha[2].detach()) > 0.99
    assert state.is_fg == [False, False, True, False]


def test_parameter_budget_at_flux_size():
    cfg = RefCompConfig(hidden_size=3072, num_double_blocks=19, num_single_blocks=38, num_heads=24)
    with torch.device("meta"):
        counts = RefCompAdapter(cfg).parameter_counts()
    total = sum(counts.values())
    assert 140e6 < total < 180e6, counts
    assert counts["lora"] == 19 * 6 * 2 * 3072 * 128          # 6 targets (LORA_TARGETS), rank 128
    assert 1.8e6 < counts["bridge"] < 1.95e6
    assert counts["assemble_gate"] == 19 * 3072 and counts["single_gate"] == 38


def _train_modulation(zero_first_layer: bool, steps: int = 2):
    """SGD steps on a loss that only the modulation pathway can lower; returns weight snapshots per step."""
    model = tiny_flux()
    adapter = tiny_adapter(model)
    model.requires_grad_(False)
    shared = adapter.modulation.shared
    if zero_first_layer:                     # the plan's init: both layers zero
        with torch.no_grad():
            shared[0].weight.zero_()
            shared[0].bias.zero_()
    layout = parse_layout({"version": 1, "width": 128, "height": 128, "instances": [
        {"box": [0.1, 0.1, 0.6, 0.6], "ref": 0, "alpha": 0.9, "depth": "fg"}]}, num_refs=1)
    inputs = flux_inputs(model, batch=1)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    target = torch.randn_like(model(**inputs)[0])
    snaps = [(shared[0].weight.clone(), shared[2].weight.clone(), shared[2].bias.clone())]
    for _ in range(steps):
        opt.zero_grad()
        state = build_state(adapter, layout, features(adapter, layout, num_refs=1))
        # layout window closed: only the modulation pathway acts
        with patch_flux(model, RefCompSession(adapter, state, Controls(layout_window=(1.0, 1.0)))):
            loss = (model(**inputs)[0] - target).pow(2).mean()
        loss.backward()
        opt.step()
        snaps.append((shared[0].weight.clone(), shared[2].weight.clone(), shared[2].bias.clone()))
    return snaps


def test_both_modulation_weights_learn():
    """Zeroing only M4's last layer: step 1 moves the last *weight* (not only its bias); the first
    layer's gradient flows through that weight, so it moves from step 2 on (adaLN-Zero dynamics:
    with the last layer exactly 0, no init lets the first layer move on step 1)."""
    snaps = _train_modulation(zero_first_layer=False)
    assert not torch.equal(snaps[1][1], snaps[0][1])                    # last weight, step 1
    assert not torch.equal(snaps[1][2], snaps[0][2])
    assert not torch.equal(snaps[2][0], snaps[0][0])                    # first weight, by step 2


def test_plan_init_only_ever_trains_the_bias():
    """The plan zeroed both layers: SiLU(0) = 0 hidden units, so neither weight ever gets gradient."""
    snaps = _train_modulation(zero_first_layer=True)
    assert torch.equal(snaps[-1][0], snaps[0][0]) and torch.equal(snaps[-1][1], snaps[0][1])
    assert not torch.equal(snaps[-1][2], snaps[0][2])


def test_trainable_namespaces():
    adapter = tiny_adapter(tiny_flux())
    adapter.set_trainable(("bridge",))
    trainable = {n.split(".")[0] for n, p in adapter.named_parameters() if p.requires_grad}
    assert trainable == {"bridge"}


def test_fifty_instances_state_shapes():
    adapter = tiny_adapter(tiny_flux())
    layout = random_layout(50, seed=1)
    state = build_state(adapter, layout, features(adapter, layout))
    assert state.tokens.shape == (50, adapter.config.hidden_size)
    assert state.shared.shape == (state.n_fg, adapter.config.hidden_size)
    assert torch.equal(state.shared, torch.zeros_like(state.shared))
