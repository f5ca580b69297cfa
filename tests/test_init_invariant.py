"""A fresh adapter leaves diffusers FLUX unchanged, on any layout (DESIGN §2)."""
import pytest
import torch

from helpers import features, flux_inputs, random_layout, tiny_adapter, tiny_flux
from refcomp_core import Controls, RefCompSession, build_state, parse_layout
from refcomp_core.hosts.diffusers_flux import patch_flux

OPEN = Controls(layout_window=(0.0, 1.0), modulation_window=(0.0, 1.0))


def overlapping():
    return parse_layout({"version": 1, "width": 128, "height": 128, "instances": [
        {"box": [0.0, 0.0, 0.6, 0.6], "ref": 0, "depth": "fg"},
        {"box": [0.3, 0.3, 0.9, 0.9], "ref": 1, "depth": "bg", "alpha": 0.9},
        {"box": [0.25, 0.25, 0.75, 0.75], "ref": 2, "alpha": 0.1, "caption": "x"}]}, num_refs=3)


def caption_only():
    return parse_layout({"version": 1, "width": 128, "height": 128, "instances": [
        {"box": [0.1, 0.1, 0.5, 0.5], "caption": "a red star"},
        {"box": [0.5, 0.5, 1.0, 1.0], "caption": "a blue disc"}]})


LAYOUTS = {
    "overlapping": overlapping,
    "caption_only": caption_only,
    "empty": lambda: parse_layout({"version": 1, "width": 128, "height": 128, "instances": []}),
    "fifty": lambda: random_layout(50, seed=7, caption_only=0.2),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_fresh_adapter_equals_vanilla(name):
    model = tiny_flux()
    adapter = tiny_adapter(model)
    layout = LAYOUTS[name]()
    inputs = flux_inputs(model, batch=2)
    with torch.no_grad():
        vanilla = model(**inputs)[0]
        state = build_state(adapter, layout, features(adapter, layout))
        with patch_flux(model, RefCompSession(adapter, state, OPEN)) as patch:
            patched = model(**inputs)[0]
        assert patch.grid.n == 64
    scale = vanilla.abs().max()
    assert torch.allclose(patched, vanilla, rtol=0, atol=1e-5 * scale), (patched - vanilla).abs().max()


def test_fresh_adapter_actually_ran_the_branch():
    """Guard against a vacuous invariant: the same layout with a non-zero gate changes the output."""
    model = tiny_flux()
    adapter = tiny_adapter(model)
    layout = overlapping()
    inputs = flux_inputs(model, batch=1)
    with torch.no_grad():
        vanilla = model(**inputs)[0]
        for gate in adapter.assemble_gate.values():
            gate.gate.fill_(0.5)
        state = build_state(adapter, layout, features(adapter, layout))
        with patch_flux(model, RefCompSession(adapter, state, OPEN)):
            patched = model(**inputs)[0]
    assert (patched - vanilla).abs().max() > 1e-3
