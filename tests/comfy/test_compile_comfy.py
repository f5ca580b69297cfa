"""RefComp under ComfyUI's TorchCompileModel, in a real ComfyUI 0.29 (issue 13: compile-friendly host).

TorchCompileModel drops dynamo's guards on everything reached through `transformer_options`, which is
where a sampler's per-step facts reach RefComp (which step, whether the grounding window is open). A
patched model compiled there must still switch its pathways on and off with the schedule: each step's
compiled output equals the uncompiled patched model's, exactly (the eager backend traces and guards as
inductor does, without code generation). Before nodes/flux_host.py keyed its traces on the call
(`follow_call`), the trace made at step 0 was replayed at step 10: the grounding branch ran outside its
window, silently."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from comfy_harness import run_driver
from test_ia_comfy import write_ia_work
from test_integration import write_parity_work
from test_xverse_comfy import write_xverse_work

pytestmark = pytest.mark.integration


def _compiled_run(comfy_env, comfy_root, work, graphs: range) -> tuple[dict, dict]:
    """The driver's compile task on `work`: no graph break (SDPA attention, as on a GPU; a break would let
    the test pass by running eagerly), one graph per window phase, and each step's compiled output equal
    to the uncompiled model's.  -> (driver result, outputs)"""
    res = run_driver(comfy_env, comfy_root, work, "compile")
    outs = load_file(str(work / "outputs.safetensors"))
    assert res["graph_breaks"] == 0, res["break_reasons"]
    assert res["unique_graphs"] in graphs, res
    for i, step in enumerate(res["steps"]):
        torch.testing.assert_close(outs[f"compiled_{i}"], outs[f"eager_{i}"], rtol=0, atol=0,
                                   msg=lambda m: f"call {i} (step {step}): {m}; {res}")
    return res, outs


def _acted(res: dict, outs: dict) -> list[bool]:
    return [not torch.equal(outs[f"eager_{i}"], outs[f"vanilla_{i}"]) for i in range(len(res["steps"]))]


def test_torch_compile_model_follows_the_grounding_window(comfy_env, comfy_root, tmp_path):
    write_ia_work(tmp_path)
    res, outs = _compiled_run(comfy_env, comfy_root, tmp_path, range(2, 3))
    assert _acted(res, outs) == [step < int(0.3 * 28) for step in res["steps"]]


def test_torch_compile_model_follows_xverse_and_the_window_composed(comfy_env, comfy_root, tmp_path):
    """InstanceAssemble + XVerse in one MODEL: the grounding window and XVerse's reference (VAE-skip)
    steps each switch the compiled graph."""
    write_xverse_work(tmp_path)
    res, outs = _compiled_run(comfy_env, comfy_root, tmp_path, range(2, 5))
    assert all(_acted(res, outs))                                               # XVerse's LoRA always acts


def test_torch_compile_model_follows_refcomps_own_pathways(comfy_env, comfy_root, tmp_path):
    """A RefComp adapter (modulation every step, Assemble-Attn and the bridge in the layout window) on a
    batch of two rows."""
    write_parity_work(tmp_path)
    res, outs = _compiled_run(comfy_env, comfy_root, tmp_path, range(2, 3))
    assert all(_acted(res, outs))                                               # the modulation always acts
