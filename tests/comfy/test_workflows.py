"""Example workflows: well-formed everywhere; against real node schemas with ComfyUI."""
from __future__ import annotations

import json

import pytest

from refcomp_core import parse_layout
from workflow_check import WORKFLOWS, canvas_layouts, check_workflow


def test_there_are_the_three_example_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"refcomp_few_references_flux_dev.json", "refcomp_dense_captions_flux_dev.json",
            "refcomp_shelf_22_references_flux_dev.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_layouts_and_model_list(path):
    wf = json.loads(path.read_text())
    layouts = canvas_layouts(wf)
    assert len(layouts) == 1
    for doc, num_refs in layouts:
        layout = parse_layout(doc, num_refs=num_refs or None)
        assert len(layout) >= 1
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    unet = "flux1-schnell.safetensors" if "schnell" in path.name else "flux1-dev.safetensors"
    assert notes and f"models/diffusion_models/{unet}" in notes[0]["widgets_values"][0]
    assert "models/refcomp/" in notes[0]["widgets_values"][0]
    listed = [m["name"] for n in wf["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert unet in listed


def test_dense_and_many_reference_layouts():
    by_name = {p.name: json.loads(p.read_text()) for p in WORKFLOWS}
    dense = parse_layout(canvas_layouts(by_name["refcomp_dense_captions_flux_dev.json"])[0][0])
    assert len(dense) >= 15 and all(i.ref is None and i.caption for i in dense.instances)
    scene = parse_layout(canvas_layouts(by_name["refcomp_shelf_22_references_flux_dev.json"])[0][0])
    assert len(scene.referenced) >= 20


def test_instanceassemble_workflows():
    """dev at 28 steps and schnell at 4, the converted file, caption-only boxes, the conversion command named."""
    by_name = {p.name: json.loads(p.read_text()) for p in WORKFLOWS}
    for name, steps in (("instanceassemble_flux_dev.json", 28), ("instanceassemble_flux_schnell.json", 4)):
        wf = by_name[name]
        nodes = {n["type"]: n for n in wf["nodes"]}
        assert nodes["KSampler"]["widgets_values"][2] == steps
        assert nodes["RefCompLoader"]["widgets_values"][0] == "instanceassemble_flux1.safetensors"
        layout = parse_layout(canvas_layouts(wf)[0][0])
        assert len(layout) >= 10 and all(i.ref is None and i.caption for i in layout.instances)
        assert "refcomp convert instanceassemble" in nodes["MarkdownNote"]["widgets_values"][0]


def test_xverse_workflows():
    """XVerse alone (two identity references) and with InstanceAssemble (plus caption-only boxes): every
    identity box's caption word is in the prompt, Apply gets XVerse Encode's references, the sampler its
    128-token conditioning."""
    from refcomp_core.xverse.spans import target_word
    by_name = {p.name: json.loads(p.read_text()) for p in WORKFLOWS}
    for name, with_ia in (("xverse_flux_dev.json", False), ("xverse_instanceassemble_flux_dev.json", True)):
        wf = by_name[name]
        types = {n["id"]: n["type"] for n in wf["nodes"]}
        nodes = {n["id"]: n for n in wf["nodes"]}
        wired = {(types[a], types[b], nodes[b]["inputs"][slot]["name"]) for _, a, _, b, slot, _ in wf["links"]}
        assert ("RefCompXVerseEncode", "RefCompApplyFLUX", "xverse") in wired
        assert ("RefCompXVerseEncode", "FluxGuidance", "conditioning") in wired
        assert (("RefCompInstanceEncode", "RefCompApplyFLUX", "instances") in wired) == with_ia
        layout = parse_layout(canvas_layouts(wf)[0][0])
        encode = next(n for n in wf["nodes"] if n["type"] == "RefCompXVerseEncode")
        identity = [i for i in layout.instances if i.ref is not None and i.depth == "fg"]
        assert len(identity) == 2 and all(f" {target_word(i.caption)} " in f" {encode['widgets_values'][0]} "
                                          for i in identity)
        assert (len(layout) > 2) == with_ia and "refcomp convert xverse" in next(
            n for n in wf["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]


def test_checker_finds_problems():
    wf = json.loads(WORKFLOWS[0].read_text())
    info = {"RefCompApplyFLUX": {"inputs": {"required": {"strength": ("FLOAT", {"min": 0, "max": 1})},
                                            "optional": {}}, "outputs": ["MODEL"]}}
    problems = check_workflow(wf, info)
    assert any("unknown type UNETLoader" in p for p in problems)
    assert any("RefCompApplyFLUX: 7 widget values, schema has 1" in p for p in problems)


@pytest.mark.integration
def test_workflows_match_real_node_schemas(object_info):
    for path in WORKFLOWS:
        problems = check_workflow(json.loads(path.read_text()), object_info)
        assert not problems, f"{path.name}: {problems}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_adapter_is_checked_before_the_encoders(path):
    """Load Diffusion Model -> Load RefComp Model.model and Load RefComp Model -> Instance Encode.refcomp_model:
    a checkpoint for another FLUX fails at load, before any encoder runs."""
    wf = json.loads(path.read_text())
    types = {n["id"]: n["type"] for n in wf["nodes"]}
    nodes = {n["id"]: n for n in wf["nodes"]}
    wired = {(types[a], types[b], nodes[b]["inputs"][slot]["name"]) for _, a, _, b, slot, _ in wf["links"]}
    assert ("UNETLoader", "RefCompLoader", "model") in wired
    if "RefCompInstanceEncode" in types.values():
        assert ("RefCompLoader", "RefCompInstanceEncode", "refcomp_model") in wired
