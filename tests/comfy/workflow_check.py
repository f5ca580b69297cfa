"""Checking ComfyUI UI-format workflows (workflows/*.json) against node schemas
(the object_info dump of a real ComfyUI, see driver.py `load`)."""
from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}
WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


def canvas_layouts(wf: dict) -> list[tuple[dict, int]]:
    """(layout dict, num_refs widget) of every RefCompLayoutCanvas node."""
    return [(json.loads(n["widgets_values"][0]), n["widgets_values"][3])
            for n in wf["nodes"] if n["type"] == "RefCompLayoutCanvas"]


def _widget_inputs(schema: dict) -> list[tuple[str, str, dict]]:
    out = []
    for sec in ("required", "optional"):
        for name, (typ, opts) in schema["inputs"][sec].items():
            if typ in WIDGET_TYPES and not opts.get("forceInput"):
                out.append((name, typ, opts))
    return out


def check_workflow(wf: dict, info: dict) -> list[str]:
    """Problems of one workflow (empty = fine): unknown nodes, link type mismatches, widget
    counts, and for RefComp nodes out-of-range or unknown widget values."""
    problems = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        if n["type"] not in info:
            problems.append(f"node {n['id']}: unknown type {n['type']}")
            continue
        widgets = _widget_inputs(info[n["type"]])
        expected = len(widgets) + sum(1 for _, _, o in widgets if o.get("control_after_generate"))
        values = n.get("widgets_values", [])
        if len(values) != expected:
            problems.append(f"node {n['id']} {n['type']}: {len(values)} widget values, schema has {expected}")
            continue
        if n["type"].startswith("RefComp"):
            for (name, typ, opts), value in zip(widgets, values):
                if typ == "COMBO" and name != "ckpt_name" and value not in opts.get("options", []):
                    problems.append(f"node {n['id']} {n['type']}.{name}: {value!r} not in {opts.get('options')}")
                if typ in ("INT", "FLOAT") and not (opts.get("min", value) <= value <= opts.get("max", value)):
                    problems.append(f"node {n['id']} {n['type']}.{name}: {value} outside [{opts.get('min')}, "
                                    f"{opts.get('max')}]")
    for lid, a, aslot, b, bslot, typ in wf["links"]:
        src, dst = nodes[a], nodes[b]
        if src["type"] in FRONTEND_ONLY or dst["type"] in FRONTEND_ONLY or src["type"] not in info \
                or dst["type"] not in info:
            continue
        outs = info[src["type"]]["outputs"]
        if aslot >= len(outs) or outs[aslot] != typ:
            problems.append(f"link {lid}: {src['type']} output {aslot} is not {typ}")
        name = dst["inputs"][bslot]["name"]
        schema = {**info[dst["type"]]["inputs"]["required"], **info[dst["type"]]["inputs"]["optional"]}
        if name not in schema:
            problems.append(f"link {lid}: {dst['type']} has no input {name}")
        elif schema[name][0] not in (typ, "*"):
            problems.append(f"link {lid}: {dst['type']}.{name} takes {schema[name][0]}, gets {typ}")
    return problems
