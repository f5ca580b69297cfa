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
from test_xverse_comfy import write_xverse_work

pytestmark = pytest.mark.integration


def test_torch_compile_model_follows_the_grounding_window(comfy_env, comfy_root, tmp_path):
    write_ia_work(tmp_path)
    res = run_driver(comfy_env, comfy_root, tmp_path, "compile")
    outs = load_file(str(tmp_path / "outputs.safetensors"))
    # SDPA attention, as on a GPU: one graph per window phase, no break (else the test could pass by running eagerly)
    assert res["graph_breaks"] == 0, res["break_reasons"]
    assert res["unique_graphs"] == 2, res
    for i, step in enumerate(res["steps"]):
        inside = step < int(0.3 * 28)
        acted = not torch.equal(outs[f"eager_{i}"], outs[f"vanilla_{i}"])
        assert acted == inside, (i, step)
        torch.testing.assert_close(outs[f"compiled_{i}"], outs[f"eager_{i}"], rtol=0, atol=0,
                                   msg=lambda m: f"call {i} (step {step}): {m}; {res}")


def test_torch_compile_model_follows_xverse_and_the_window_composed(comfy_env, comfy_root, tmp_path):
    """InstanceAssemble + XVerse in one MODEL under TorchCompileModel: the grounding window and XVerse's
    reference (VAE-skip) steps each switch the compiled graph; every step equals the uncompiled model."""
    write_xverse_work(tmp_path)
    res = run_driver(comfy_env, comfy_root, tmp_path, "compile")
    outs = load_file(str(tmp_path / "outputs.safetensors"))
    assert res["graph_breaks"] == 0, res["break_reasons"]
    assert 2 <= res["unique_graphs"] <= 4, res
    for i, step in enumerate(res["steps"]):
        assert not torch.equal(outs[f"eager_{i}"], outs[f"vanilla_{i}"])          # XVerse's LoRA always acts
        torch.testing.assert_close(outs[f"compiled_{i}"], outs[f"eager_{i}"], rtol=0, atol=0,
                                   msg=lambda m: f"call {i} (step {step}): {m}; {res}")
