"""The InstanceAssemble pathway on the diffusers host against the naive peft oracle (float32)."""
from __future__ import annotations

import pytest
import torch

import ia_oracle
from ia_setup import H, W, attach_layout_forward, layout_of, make_setup
from refcomp_core import Controls, RefCompSession, build_state
from refcomp_core.hosts.diffusers_flux import patch_flux


def ours(setup, layout, rows: list[bool], *, step: int = 0, steps: int = 28, strength: float = 1.0):
    model = setup.copy_model()
    state = build_state(setup.adapter, layout, setup.features(layout))
    session = RefCompSession(setup.adapter, [state if r else None for r in rows],
                             Controls(strength=strength), axes_dim=tuple(model.config.axes_dims_rope),
                             step=step, num_steps=steps)
    with torch.no_grad(), patch_flux(model, session):
        return model(**setup.inputs)[0]


def oracle(setup, layout, rows: list[bool], *, scale: float = 1.0, network_alphas=None):
    model = ia_oracle.load_peft(setup.copy_model(), str(setup.lora_file), network_alphas)
    attach_layout_forward(model, setup.layout_weights)
    pooled = setup.features(layout).caption
    with torch.no_grad():
        return ia_oracle.forward(model, setup.layout_weights, [i.box for i in layout.instances], pooled,
                                 setup.inputs, H, W, rows, scale)


def vanilla(setup):
    with torch.no_grad():
        return setup.copy_model()(**setup.inputs)[0]


@pytest.mark.parametrize("rows", [[True, True], [True, False]], ids=["both_rows", "cond_only"])
def test_matches_oracle(tmp_path, rows, one_thread) -> None:
    setup = make_setup(tmp_path)
    layout = layout_of()
    got, want, base = ours(setup, layout, rows), oracle(setup, layout, rows), vanilla(setup)
    assert (want - base).abs().max() > 1e-2                         # the branch changes the output
    assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())
    if not rows[1]:
        # the uncond row is plain FLUX (the vanilla block on a one-row slice: equal up to batching)
        torch.testing.assert_close(got[1], base[1], rtol=0, atol=1e-5)


def test_oracle_comparison_can_fail(tmp_path, one_thread) -> None:
    """Half the layout scale in the oracle must not match (the comparison is sensitive)."""
    setup = make_setup(tmp_path)
    layout = layout_of()
    got, bad = ours(setup, layout, [True, True]), oracle(setup, layout, [True, True], scale=0.5)
    assert float((got - bad).abs().max()) > 1e-3


def test_alphas_scale_the_lora(tmp_path, one_thread) -> None:
    """A file with alpha 2 at rank 4 acts at 0.5, as diffusers 0.33.1 (peft with network alphas) applies it."""
    setup = make_setup(tmp_path, alpha=2.0)
    layout = layout_of()
    alphas = {f"transformer.{m}": 2.0 for m in setup.lora}
    got, want = ours(setup, layout, [True, True]), oracle(setup, layout, [True, True], network_alphas=alphas)
    assert float((got - want).abs().max()) <= 1e-5


def test_window_outside_and_scale_zero_are_plain_flux(tmp_path, one_thread) -> None:
    setup = make_setup(tmp_path)
    layout = layout_of()
    base = vanilla(setup)
    assert torch.equal(ours(setup, layout, [True, True], step=8, steps=28), base)      # int(0.3 * 28) = 8: off
    assert not torch.equal(ours(setup, layout, [True, True], step=7, steps=28), base)
    assert torch.equal(ours(setup, layout, [True, True], strength=0.0), base)
    assert torch.equal(ours(setup, layout_of([]), [True, True]), base)                  # zero boxes
