"""Runs inside a real ComfyUI (COMFYUI_PYTHON, cwd = a temp copy of COMFYUI_PATH) and prints
one JSON line `RESULT {...}` for the pytest side. Never imported by pytest.

    python driver.py <comfy_root> <pack_dir_in_custom_nodes> <work_dir> <task>

Tasks: load (node registry), parity (tensors for the diffusers comparison),
ia_parity / xverse_parity (the released pathways, for the oracle comparisons), compile (TorchCompileModel
over a patched model), sample (ComfyUI's own
executor on a tiny FLUX), errors (each prompt of prompts.json through the executor; the error
message ComfyUI reports for each), sample_each (each prompt of prompts.json in turn, recording which
nodes ran and the errors).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

ROOT, PACK, WORK, TASK = sys.argv[1:5]
os.chdir(ROOT)
sys.path.insert(0, ROOT)
sys.argv = [sys.argv[0]]

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
comfy.cli_args.args.disable_all_custom_nodes = True
if TASK == "compile":     # SDPA attention, as on a GPU (ComfyUI's CPU attention queries free memory per call)
    comfy.cli_args.args.use_pytorch_cross_attention = True

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver_nodes  # noqa: E402

RESULT: dict = {}


def init_nodes() -> None:
    import nodes
    extra = os.path.join(WORK, "extra_model_paths.yaml")
    if os.path.exists(extra):       # as main.py does, before custom nodes load
        import utils.extra_config
        utils.extra_config.load_extra_path_config(extra)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    ok = asyncio.run(nodes.load_custom_node(PACK))
    RESULT["pack_loaded"] = bool(ok)
    nodes.NODE_CLASS_MAPPINGS.update(driver_nodes.NODE_CLASS_MAPPINGS)


def task_load() -> None:
    import nodes
    init_nodes()
    info = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        types = cls.INPUT_TYPES()
        info[name] = {
            "inputs": {sec: {k: (v[0] if isinstance(v[0], str) else "COMBO",
                                 {**(v[1] if len(v) > 1 else {}),
                                  **({"options": list(v[0])} if isinstance(v[0], (list, tuple)) else {})})
                             for k, v in types.get(sec, {}).items()} for sec in ("required", "optional")},
            "outputs": list(getattr(cls, "RETURN_TYPES", ())),
            "category": getattr(cls, "CATEGORY", ""),
            "description": getattr(cls, "DESCRIPTION", ""),
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
        }
    with open(os.path.join(WORK, "object_info.json"), "w") as f:
        json.dump(info, f, default=str)
    RESULT["refcomp_nodes"] = sorted(n for n in info if n.startswith("RefComp") and not n.startswith("RefCompTest"))
    import folder_paths
    RESULT["refcomp_folder"] = folder_paths.get_folder_paths("refcomp")
    check_host_conversions()


def check_host_conversions() -> None:
    """RoPE: the canonical Rope from ComfyUI's pe rotates like ComfyUI's own apply_rope.
    Schedule: sigma_to_percent inverts ModelSamplingFlux.percent_to_sigma."""
    import comfy.ldm.flux.math as fm
    import comfy.model_sampling
    from comfy.ldm.flux.layers import EmbedND
    from refcomp_core.rope import apply_rope
    views = sys.modules[PACK.replace(".", "_x_") + ".nodes.flux_views"]
    ids = torch.rand(2, 7, 3) * 10
    pe = EmbedND(dim=16, theta=10000, axes_dim=[4, 6, 6])(ids)                    # (b, 1, l, 8, 2, 2)
    q, k = torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 16)                     # (b, h, l, c)
    cq, ck = fm.apply_rope(q, k, pe)
    rope = views.canonical_rope(pe)
    ours = apply_rope(q.transpose(1, 2), rope).transpose(1, 2)                     # core wants (b, l, h, c)
    RESULT["rope_max_err"] = float((ours - cq).abs().max())

    class Sampling(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass
    ms = Sampling(None)
    errs = [abs(views.sigma_to_percent(ms.percent_to_sigma, float(ms.percent_to_sigma(p))) - p)
            for p in (0.05, 0.3, 0.5, 0.77, 0.95)]
    RESULT["percent_max_err"] = max(errs)


def _pack(name: str):
    """A module of the pack as ComfyUI loaded it ("nodes.flux_apply", "nodes.runtime", ...)."""
    return sys.modules[f"{sys.modules[PACK.replace('.', '_x_')].__name__}.{name}"]


def _work_inputs():
    """WORK's tiny FLUX (as a ComfyUI model) and input tensors."""
    return (driver_nodes.tiny_flux_from_diffusers(os.path.join(WORK, "flux.safetensors")),
            load_file(os.path.join(WORK, "inputs.safetensors")))


def _work_layout():
    from refcomp_core.layout import parse_layout
    with open(os.path.join(WORK, "layout.json")) as f:
        return parse_layout(f.read())


def _run_model(patcher, inputs: dict, cond_or_uncond: list[int], sample_sigmas=None, **extra) -> torch.Tensor:
    import comfy.model_management as mm
    import comfy.patcher_extension as pe
    to = dict(patcher.model_options["transformer_options"])
    if sample_sigmas is not None:
        to["sample_sigmas"] = sample_sigmas
    to["wrappers"] = pe.merge_nested_dicts(dict(to.get("wrappers", {})), patcher.wrappers, copy_dict1=True) \
        if hasattr(pe, "merge_nested_dicts") else patcher.wrappers
    to["cond_or_uncond"] = cond_or_uncond
    to["sigmas"] = inputs["sigma"]
    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.apply_model(inputs["x"], inputs["sigma"], c_crossattn=inputs["context"],
                                         y=inputs["pooled"], guidance=inputs["guidance"], transformer_options=to, **extra)


def task_parity() -> None:
    """Vanilla and patched denoised outputs for the tensors in WORK (written by the pytest side)."""
    init_nodes()
    from refcomp_core.checkpoint import load_adapter
    from refcomp_core.controls import Controls
    from refcomp_core.state import InstanceFeatures
    apply_refcomp, runtime = _pack("nodes.flux_apply").apply_refcomp, _pack("nodes.runtime")

    model, inputs = _work_inputs()
    layout = _work_layout()
    feats = InstanceFeatures(clip_image=inputs["clip"], dino=inputs["dino"], caption=inputs["caption"])
    outs = {}
    batch = inputs["x"].shape[0]
    kontext = inputs["x"][:, :, :8, :8] * 0.5          # an 8x8 reference latent per row
    for tag in ("fresh", "random"):
        adapter, _ = load_adapter(os.path.join(WORK, f"adapter_{tag}.safetensors"))
        ap = runtime.adapter_patcher(adapter)
        for uncond in (False, True):
            controls = Controls(layout_window=(0.0, 1.0), apply_to_uncond=uncond)
            patched = apply_refcomp(model, ap, layout, feats, controls)
            key = f"{tag}_{'all' if uncond else 'cond'}"
            outs[f"{key}_cond"] = _run_model(patched, inputs, [0])
            # the same rows twice, batched as [uncond | cond] chunks
            two = {k: torch.cat([v, v]) if k in ("x", "sigma", "context", "pooled", "guidance") else v
                   for k, v in inputs.items()}
            outs[f"{key}_batched"] = _run_model(patched, two, [1, 0])
            outs[f"{key}_uncond_alone"] = _run_model(patched, inputs, [1])
            if not uncond:   # Kontext-style reference latents appended after the main grid
                outs[f"{tag}_kontext"] = _run_model(patched, inputs, [0], ref_latents=[kontext])
    outs["vanilla"] = _run_model(model, inputs, [0])
    outs["vanilla_kontext"] = _run_model(model, inputs, [0], ref_latents=[kontext])
    errors = {}
    wrong, _ = load_adapter(os.path.join(WORK, "adapter_wrong.safetensors"))
    try:
        apply_refcomp(model, runtime.adapter_patcher(wrong), layout, feats, Controls())
    except ValueError as err:
        errors["hidden"] = str(err)
    try:
        apply_refcomp(patched, ap, layout, feats, Controls())
    except ValueError as err:
        errors["twice"] = str(err)
    RESULT["errors"] = errors
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(WORK, "outputs.safetensors"))
    RESULT["batch"] = batch
    RESULT["patches_on_input_model"] = len(model.model_options["transformer_options"].get("patches_replace", {}))


def task_ia_parity() -> None:
    """The InstanceAssemble pathway from a converted file: cond-only and [uncond | cond] batches at a sigma
    inside the grounding window, and one outside it, with the sampler's schedule in transformer_options."""
    init_nodes()
    from refcomp_core.controls import Controls
    from refcomp_core.state import InstanceFeatures
    apply_refcomp, runtime = _pack("nodes.flux_apply").apply_refcomp, _pack("nodes.runtime")
    from refcomp_core.checkpoint import load_adapter

    model, inputs = _work_inputs()
    layout = _work_layout()
    adapter, _ = load_adapter(os.path.join(WORK, "ia.safetensors"))
    patched = apply_refcomp(model, runtime.adapter_patcher(adapter), layout,
                            InstanceFeatures(caption=inputs["caption"]), Controls())
    schedule = inputs["schedule"]
    outs = {"vanilla": _run_model(model, inputs, [0]),
            "ia_cond": _run_model(patched, inputs, [0], sample_sigmas=schedule)}
    two = {k: torch.cat([v, v]) if k in ("x", "sigma", "context", "pooled", "guidance") else v
           for k, v in inputs.items()}
    outs["ia_batched"] = _run_model(patched, two, [1, 0], sample_sigmas=schedule)
    late = dict(inputs, sigma=torch.full_like(inputs["sigma"], float(schedule[10])))
    outs["late_vanilla"] = _run_model(model, late, [0])
    outs["late_ia"] = _run_model(patched, late, [0], sample_sigmas=schedule)
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(WORK, "outputs.safetensors"))
    RESULT["batch"] = inputs["x"].shape[0]


def task_compile() -> None:
    """ComfyUI's TorchCompileModel over a patched model (WORK's InstanceAssemble file, else its random RefComp
    adapter; with XVerse when its file is there), with the node's own guard filter and the eager
    backend: dynamo's tracing and guards, no code generation): steps inside and outside the grounding
    window, in the order a sampler runs them and back, against the uncompiled patched model."""
    init_nodes()
    import comfy_extras.nodes_torch_compile as ntc
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from refcomp_core.controls import Controls
    from refcomp_core.state import InstanceFeatures
    from torch._dynamo.utils import counters
    apply_refcomp, runtime = _pack("nodes.flux_apply").apply_refcomp, _pack("nodes.runtime")
    from refcomp_core.checkpoint import load_adapter

    model, inputs = _work_inputs()
    layout = _work_layout()
    ia = os.path.exists(os.path.join(WORK, "ia.safetensors"))
    adapter, _ = load_adapter(os.path.join(WORK, "ia.safetensors" if ia else "adapter_random.safetensors"))
    feats = InstanceFeatures(caption=inputs["caption"]) if ia else \
        InstanceFeatures(clip_image=inputs["clip"], dino=inputs["dino"], caption=inputs["caption"])
    with_xverse = os.path.exists(os.path.join(WORK, "xverse.safetensors"))
    patched = apply_refcomp(model, runtime.adapter_patcher(adapter), layout, feats, Controls(),
                            xverse=_xverse_apply(model, inputs)() if with_xverse else None)
    compiled = patched.clone()
    set_torch_compile_wrapper(model=compiled, backend="eager", options={"guard_filter_fn": ntc.skip_torch_compile_dict})
    schedule = inputs["schedule"]
    steps = [0, 1, 5, 10, 11, 27, 0]     # in the grounding window (< 8), out of it, XVerse's skip steps, and back
    outs = {}
    for i, step in enumerate(steps):
        feed = dict(inputs, sigma=torch.full_like(inputs["sigma"], float(schedule[step])))
        outs[f"eager_{i}"] = _run_model(patched, feed, [0], sample_sigmas=schedule)
        outs[f"compiled_{i}"] = _run_model(compiled, feed, [0], sample_sigmas=schedule)
        outs[f"vanilla_{i}"] = _run_model(model, feed, [0])
    RESULT["steps"] = steps
    RESULT["graph_breaks"] = sum(counters["graph_break"].values())
    RESULT["break_reasons"] = sorted({" / ".join(k.splitlines()[:3])[:400] for k in counters["graph_break"]})
    RESULT["unique_graphs"] = counters["stats"]["unique_graphs"]
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(WORK, "outputs.safetensors"))


def _xverse_apply(model, inputs: dict):
    """XVerse from WORK's converted file, references and binding.  -> make(): a fresh XVerseApply (its own run)"""
    import comfy.model_management as mm
    import comfy.model_patcher
    from refcomp_core.released.xverse import load_xverse
    from refcomp_core.xverse.compose import XVerseReference, build_run
    from refcomp_core.xverse.presets import XVersePreset
    from refcomp_core.xverse.spans import bind_ids
    host, runtime = _pack("nodes.flux_host"), _pack("nodes.runtime")
    with open(os.path.join(WORK, "binding.json")) as f:
        spec = json.load(f)
    adapter, _ = load_xverse(os.path.join(WORK, "xverse.safetensors"))
    refs = [XVerseReference(txt=inputs[f"txt{i}"], img=inputs[f"img{i}"], latents=inputs[f"lat{i}"],
                            is_id=bool(spec["is_id"][i])) for i in range(spec["refs"])]
    binding = bind_ids(spec["prompt"], spec["captions"], spec["words"], length=spec["length"])
    preset = XVersePreset(name="test", lora_scale=spec["lora_scale"], cond_size=spec["cond_size"])
    dims = _pack("nodes.flux_views").flux_dims(model)
    patcher = comfy.model_patcher.CoreModelPatcher(runtime.AdapterHolder(adapter), load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
    return lambda: host.XVerseApply(run=build_run(adapter, refs, binding, preset, axes_dim=dims.axes_dim,
                                                  theta=dims.theta, num_double_blocks=dims.num_double_blocks),
                                    patcher=patcher)


def task_xverse_parity() -> None:
    """XVerse from a converted file (alone, and with the InstanceAssemble file when present): a call inside the
    reference window, one on a VAE-skip step, and an [uncond | cond] batch."""
    init_nodes()
    from refcomp_core.checkpoint import load_adapter
    from refcomp_core.controls import Controls
    from refcomp_core.layout import parse_layout
    from refcomp_core.state import InstanceFeatures
    apply_refcomp, runtime = _pack("nodes.flux_apply").apply_refcomp, _pack("nodes.runtime")

    model, inputs = _work_inputs()
    make_xverse = _xverse_apply(model, inputs)
    empty = parse_layout({"version": 1, "width": 64, "height": 64, "instances": []})
    patched = apply_refcomp(model, None, empty, InstanceFeatures(), Controls(), xverse=make_xverse())
    schedule = inputs["schedule"]
    outs = {"vanilla": _run_model(model, inputs, [0]), "xv": _run_model(patched, inputs, [0], sample_sigmas=schedule)}
    two = {k: torch.cat([v, v]) if k in ("x", "sigma", "context", "pooled", "guidance") else v
           for k, v in inputs.items()}
    outs["xv_batched"] = _run_model(patched, two, [1, 0], sample_sigmas=schedule)
    early = dict(inputs, sigma=torch.full_like(inputs["sigma"], float(schedule[1])))
    outs["xv_skip"] = _run_model(patched, early, [0], sample_sigmas=schedule)
    if os.path.exists(os.path.join(WORK, "ia.safetensors")):
        ia, _ = load_adapter(os.path.join(WORK, "ia.safetensors"))
        layout = _work_layout()
        both = apply_refcomp(model, runtime.adapter_patcher(ia), layout, InstanceFeatures(caption=inputs["caption"]),
                             Controls(), xverse=make_xverse())
        outs["both"] = _run_model(both, inputs, [0], sample_sigmas=schedule)
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(WORK, "outputs.safetensors"))


class _Server:
    """The little of PromptServer that the executor uses."""

    client_id = None
    last_node_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def _execute(prompt_id: str, prompt: dict) -> dict:
    """Validate and run one prompt with ComfyUI's own executor. -> {"valid", "validation" (when
    invalid), "success", "errors": [{node_type, exception_message, exception_type}]}"""
    import execution

    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        return {"valid": False, "validation": {"error": valid[1], "node_errors": valid[3]}}
    cache_type = getattr(execution, "CacheType").CLASSIC
    ex = execution.PromptExecutor(_Server(), cache_type=cache_type, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    ex.execute(prompt, prompt_id, {}, valid[2])
    errors = [{k: data.get(k) for k in ("node_type", "exception_message", "exception_type")}
              for event, data in ex.status_messages if event == "execution_error"]
    return {"valid": True, "success": bool(ex.success), "errors": errors}


def task_sample() -> None:
    init_nodes()
    with open(os.path.join(WORK, "prompt.json")) as f:
        prompt = json.load(f)
    RESULT.update(_execute("p1", prompt))


def task_errors() -> None:
    """Run each prompt of prompts.json ({name: prompt}); RESULT["errors"][name] is the last
    error the executor reports (node type, exception message), or None when the prompt ran."""
    init_nodes()
    with open(os.path.join(WORK, "prompts.json")) as f:
        prompts = json.load(f)
    RESULT["errors"] = {}
    for name, prompt in prompts.items():
        res = _execute(name, prompt)
        RESULT["errors"][name] = res if not res["valid"] else (None if res["success"] else (res["errors"] or [{}])[-1])


def run_prompt(prompt: dict, pid: str, out: dict) -> None:
    """Validate and execute one API prompt with ComfyUI's executor; results go into `out`
    (valid, success, errors [{node_type, exception_message}], executed [node ids in order])."""
    import execution

    class Server(_Server):
        def send_sync(self, event, data, sid=None):
            if event == "execution_error":
                out.setdefault("errors", []).append({k: data.get(k) for k in ("node_type", "exception_message")})
            elif event == "executing" and data.get("node") is not None:
                out.setdefault("executed", []).append(data["node"])

    valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
    out["valid"] = bool(valid[0])
    if not valid[0]:
        out["validation"] = {"error": valid[1], "node_errors": valid[3]}
        return
    cache_type = getattr(execution, "CacheType").CLASSIC
    ex = execution.PromptExecutor(Server(), cache_type=cache_type, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    ex.execute(prompt, pid, {"client_id": "refcomp-test"}, valid[2])   # with a client, errors are sent to it
    out["success"] = bool(ex.success)


def task_sample_each() -> None:
    init_nodes()
    with open(os.path.join(WORK, "prompts.json")) as f:
        prompts = json.load(f)["prompts"]
    RESULT["runs"] = []
    for i, prompt in enumerate(prompts):
        out: dict = {}
        run_prompt(prompt, f"p{i}", out)
        RESULT["runs"].append(out)


if __name__ == "__main__":
    try:
        {"load": task_load, "parity": task_parity, "sample": task_sample, "ia_parity": task_ia_parity,
         "xverse_parity": task_xverse_parity, "compile": task_compile, "errors": task_errors, "sample_each": task_sample_each}[TASK]()
    finally:
        print("RESULT " + json.dumps(RESULT, default=str), flush=True)
