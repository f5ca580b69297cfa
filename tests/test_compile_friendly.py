"""The patched transformer compiles as one graph (issue 13: "friendly to CUDA graphs / torch.compile").

Once a layout's tensors are built (the first call: packing, block mask, index tensors, once per
layout), a patched FLUX forward on the fused (CUDA) path must trace with no graph break, so
`torch.compile(model, fullgraph=True)` works and CUDA graphs can capture the whole step. Here on CPU
with the eager backend (dynamo's tracing is the same on every device) on a tiny random diffusers
FLUX, for RefComp's pathways and InstanceAssemble's; one integration test runs inductor's code
generation. Before these tests the fused double block alone broke its graph 33 times (a lock in
`functools.cached_property`, a warnings filter around flex_attention, `.item()` in the per-forward
set-up, a data-dependent gate check per single block).
"""
from __future__ import annotations

import pytest
import torch
from helpers import features, flux_inputs, randomize, tiny_adapter, tiny_flux
from test_hot_paths import _ia_adapter, _layout

from refcomp_core import Controls, RefCompSession, build_state
from refcomp_core.blocks import hotpath
from refcomp_core.hosts.diffusers_flux import patch_flux

def _setup(kind: str, boxes: int, seed: int, batch: int):
    """A tiny random FLUX, an active adapter of `kind`, the state of `boxes` boxes (every other one FG)
    and forward inputs.  -> (model, adapter, state, inputs)"""
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model), scale=0.2) if kind == "refcomp" else _ia_adapter(model)
    layout = _layout(boxes, seed=seed)
    return model, adapter, build_state(adapter, layout, features(adapter, layout)), flux_inputs(model, batch=batch)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["refcomp", "instanceassemble"])
@pytest.mark.parametrize("progress", [0.0, 0.6])                       # inside / outside the layout window
def test_patched_forward_traces_without_graph_breaks(kind: str, progress: float) -> None:
    model, adapter, state, inputs = _setup(kind, 9, seed=3, batch=2)
    controls = Controls(layout_window=(0.0, 0.3), modulation_window=(0.0, 1.0), mask_margin=1.5)
    with hotpath.force("fused"):
        with patch_flux(model, RefCompSession(adapter, state, controls, progress=progress)):
            want = model(**inputs)[0]                         # eager; builds the layout's tensors
        explained = torch._dynamo.explain(lambda: model(**inputs))
        with patch_flux(model, RefCompSession(adapter, state, controls, progress=progress)):
            report = explained()
        assert report.graph_break_count == 0, [b.reason.splitlines()[0] for b in report.break_reasons]
        assert report.graph_count == 1
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        for _ in range(2):                                     # a new session per call, as ComfyUI makes
            with patch_flux(model, RefCompSession(adapter, state, controls, progress=progress)):
                got = compiled(**inputs)[0]
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    acted = bool((want - model(**inputs)[0]).abs().max() > 1e-3)
    assert acted == (progress < 0.3 or kind == "refcomp")      # IA acts only in its window; RefComp's modulation always


def test_rope_turn_is_cached_outside_compile_and_traced_inside() -> None:
    from refcomp_core.rope import Rope
    r = Rope(torch.randn(1, 5, 3), torch.randn(1, 5, 3))
    assert r.turn is r.turn                                    # built once per Rope in eager code
    traced = torch.compile(lambda c, s: Rope(c, s).turn * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(r.cos, r.sin), r.turn * 2)


@pytest.mark.integration
@torch.no_grad()
def test_inductor_compiled_patched_forward_is_as_close_as_compiled_vanilla() -> None:
    """Real code generation (inductor, CPU here; a minute): the compiled patched forward differs from
    eager no more than compiled vanilla FLUX differs from eager vanilla (reassociated sums), times 4."""
    model, adapter, state, inputs = _setup("refcomp", 9, seed=3, batch=2)
    torch._dynamo.reset()
    vanilla = model(**inputs)[0]
    vanilla_err = (torch.compile(model, fullgraph=True)(**inputs)[0] - vanilla).abs().max()
    torch._dynamo.reset()
    with hotpath.force("fused"), patch_flux(model, RefCompSession(adapter, state, Controls(), progress=0.0)):
        want = model(**inputs)[0]
        got = torch.compile(model, fullgraph=True)(**inputs)[0]
    assert (want - vanilla).abs().max() > 1e-2
    assert (got - want).abs().max() <= 4 * max(float(vanilla_err), 1e-6), (float((got - want).abs().max()),
                                                                           float(vanilla_err))


@torch.no_grad()
@pytest.mark.parametrize("kind", ["refcomp", "instanceassemble"])
def test_compiled_model_follows_the_windows_step_by_step(kind: str) -> None:
    """A sampler's steps in order, into and out of the windows and back: the compiled model retraces when
    a window opens or closes (dynamo guards on the session here) and equals the eager model every step."""
    model, adapter, state, inputs = _setup(kind, 6, seed=5, batch=1)
    controls = Controls(layout_window=(0.0, 0.3), modulation_window=(0.0, 0.6), mask_margin=1.5)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    acted = []
    with hotpath.force("fused"):
        for step in (0, 1, 10, 11, 20, 0):
            session = lambda: RefCompSession(adapter, state, controls, progress=step / 28, step=step,  # noqa: E731
                                             num_steps=28)
            with patch_flux(model, session()):
                want = model(**inputs)[0]
            with patch_flux(model, session()):
                got = compiled(**inputs)[0]
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: f"step {step}: {m}")
            acted.append(not torch.equal(want, model(**inputs)[0]))
    expect = [True, True, kind == "refcomp", kind == "refcomp", False, True]   # 20/28 is past both windows
    assert acted == expect
