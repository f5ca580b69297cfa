"""The sections of `bench/gpu_report.py` (one function each; see its docstring): the transformer
step, the training steps, the double block and torch.compile. Each adds a table to the report
and asks the budget before it starts.

Axis letters: b batch, N image tokens, n instances, D width.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable

from gpu_support import GOALS, Budget, Device, Report, goal, ratio

log = logging.getLogger("gpu_report")


def transformer_section(rep: Report, dev: Device, model, adapters: dict, s, inputs: dict, budget: Budget) -> dict:
    """One forward per variant at each box count: ratios, the computed run, peak memory."""
    from common import time_interleaved
    from gpu_parts import forward, scene, sessions
    from refcomp_core import Controls
    from refcomp_core.pathways.instanceassemble import ia_step_active
    torch = dev.torch
    share = {"refcomp": sum(Controls().layout_on(i / s.steps) for i in range(s.steps)) / s.steps,
             "ia": sum(ia_step_active(i, s.steps, Controls().layout_window) for i in range(s.steps)) / s.steps}
    results: dict[str, dict[str, float]] = {}
    for n in s.boxes:
        if not budget.allows(f"transformer step, {n} boxes", 20):
            continue
        fns = {"vanilla": forward(model, inputs, None)}
        for name, adapter in adapters.items():
            for where, session in sessions(adapter, scene(adapter, s, n), s).items():
                fns[f"{name}_{where}"] = forward(model, inputs, session)
        times = time_interleaved(fns, repeats=s.repeats, warmup=s.warmup, device=dev.device)
        r = {k: times.ratio(k, "vanilla") for k in fns}
        r["vanilla_ms"] = statistics.median(times.wall["vanilla"]) * 1e3
        peaks = {k: dev.peak_gb(fn) for k, fn in fns.items()}
        for name in adapters:
            r[f"{name}_run"] = share[name] * r[f"{name}_in"] + (1 - share[name]) * r[f"{name}_out"]
            if peaks["vanilla"] is not None:
                r[f"{name}_vram"] = max(peaks[f"{name}_in"], peaks[f"{name}_out"]) - peaks["vanilla"]
        results[n] = r
        log.info("%d boxes: %s", n, {k: round(v, 3) for k, v in r.items()})
        if dev.cuda:
            torch.cuda.empty_cache()
    boxes = list(results)
    rows = [["", *[f"{n} boxes" for n in boxes], "goal (issue 13)"],
            ["one transformer forward, vanilla", *[f"{results[n]['vanilla_ms']:.1f} ms" for n in boxes], ""]]
    for name, label in (("refcomp", "RefComp"), ("ia", "InstanceAssemble pathway")):
        rows.append([f"{label}: step inside the layout window", *[ratio(results[n][f"{name}_in"]) for n in boxes],
                     " / ".join(goal(results[n][f"{name}_in"], GOALS.get(f"in{n}")) for n in boxes)])
        rows.append([f"{label}: step outside it", *[ratio(results[n][f"{name}_out"]) for n in boxes],
                     " / ".join(goal(results[n][f"{name}_out"], GOALS["out"]) for n in boxes)])
        rows.append([f"{label}: whole {s.steps}-step run (computed)", *[ratio(results[n][f"{name}_run"]) for n in boxes],
                     goal(results[boxes[-1]][f"{name}_run"], GOALS["run50"]) if boxes else ""])
        if boxes and f"{name}_vram" in results[boxes[0]]:
            rows.append([f"{label}: extra peak memory", *[f"{results[n][f'{name}_vram']:.2f} GB" for n in boxes],
                         f"<= {GOALS['vram_gb']:.0f} GB"])
    rep.table("Transformer step (batch 1)", rows, [
        f"The run is computed: of {s.steps} steps, RefComp's default window (progress <= 0.3, progress = "
        f"step / {s.steps}) holds {share['refcomp'] * s.steps:.0f}, InstanceAssemble's step rule "
        f"{share['ia'] * s.steps:.0f}; the rest are outside. InstanceAssemble's branch has no modulation, so "
        "outside its window its blocks run vanilla behind the patch.",
        "InstanceAssemble's FLUX LoRA rank is not published (WEIGHTS_COMPAT.md): the random adapter uses "
        f"rank {s.ia['rank']} on every site of its layout blocks."])
    return results


def training_section(rep: Report, dev: Device, model, adapter, s, inputs: dict, budget: Budget) -> None:
    from common import time_interleaved
    from gpu_parts import scene, training_step
    from training.attention import choose_attention_backends
    if not budget.allows("training steps", 60):
        return
    cudnn = choose_attention_backends(dev.device, gradient_checkpointing=True)
    plan = [("floor", None, 1)] + [(f"stage1_{n}", n, 1) for n in s.boxes] + \
        [(f"stage{k}_{s.boxes[-1]}", s.boxes[-1], k) for k in (2, 3)]
    fns = {name: training_step(model, adapter, None if n is None else scene(adapter, s, n), stage, inputs,
                               dev.device) for name, n, stage in plan}
    times = time_interleaved(fns, repeats=s.train_repeats, warmup=1, device=dev.device, inference=False)
    peaks = {name: dev.peak_gb(fn, inference=False) for name, fn in fns.items()}
    rows = [["training step", "seconds", "/ floor", "peak memory", "goal"]]
    for name, n, stage in plan:
        label = "vanilla forward + backward (the floor)" if n is None else f"stage {stage}, {n} boxes"
        r = times.ratio(name, "floor")
        rows.append([label, f"{statistics.median(times.wall[name]):.3f}", ratio(r),
                     "n/a" if peaks[name] is None else f"{peaks[name]:.1f} GB",
                     goal(r, GOALS["train50"]) if n == 50 else ""])
    rep.table("Training step (batch 1, gradient checkpointing, AdamW)", rows, [
        f"Attention backends as the trainer chooses them under gradient checkpointing: cuDNN attention "
        f"{'on' if cudnn else 'off'}. The step is the flow loss only (no box/identity losses, no region "
        "preservation forwards); the adapter is fp32 under bf16 autocast, as with mixed_precision: bf16."])


def block_section(rep: Report, dev: Device, model, adapter, s, budget: Budget) -> None:
    """The double block on its own: times, ATen ops and kernels per call."""
    from common import inputs as block_inputs
    from common import make_call, ropes, time_interleaved
    from gpu_parts import scene
    from op_count import count_ops
    from refcomp_core import build_state
    from refcomp_core.blocks import run_double
    from refcomp_core.hosts.diffusers_flux import double_view
    if not budget.allows("double block", 15):
        return
    dims = s.dims
    block = model.transformer_blocks[0]
    view = double_view(block, dims.heads)
    img, txt, vec = block_inputs(dims, dev.device, next(model.parameters()).dtype)
    diff_rope, rope = ropes(dims, dev.device)
    fns = {"vanilla": lambda: block(img, txt, vec, diff_rope)}
    labels = {"vanilla": "vanilla"}
    for n in s.boxes:
        sc = scene(adapter, s, n)
        with dev.torch.no_grad():
            state = build_state(adapter, sc.layout, sc.features)
        for name, layout_on, what in ((f"full{n}", True, "mod + assemble"), (f"mod{n}", False, "mod only")):
            call = make_call(adapter, state, dims, dev.device, layout_on=layout_on)
            fns[name] = lambda call=call: run_double(view, img, txt, vec, rope, call.pathways, vanilla=None)
            labels[name] = f"{what}, {n} boxes"
    times = time_interleaved(fns, repeats=max(s.repeats, 5), warmup=s.warmup, device=dev.device)
    rows = [["double block call", "time / vanilla", "ATen ops", "ATen ops moving data", "GPU kernels"]]
    for name, fn in fns.items():
        ops, kernels = count_ops(fn), dev.kernels(fn)
        rows.append([labels[name], ratio(times.ratio(name, "vanilla")), str(ops.total), str(ops.launches),
                     "n/a (CPU)" if kernels is None else str(kernels)])
    rep.table("Double block (block 0)", rows, [
        f"Vanilla block: {statistics.median(times.wall['vanilla']) * 1e3:.2f} ms. Before issue 13 the patched "
        "block launched 618 kernels per call at 50 boxes against 75 for the vanilla block (H200)."])


def compile_section(rep: Report, dev: Device, model, adapter, s, budget: Budget) -> None:
    """Does torch.compile pay on the (static per layout) double block? Vanilla and patched, 50 boxes."""
    import torch
    from common import inputs as block_inputs
    from common import make_call, ropes, time_interleaved
    from gpu_parts import scene
    from refcomp_core import build_state
    from refcomp_core.blocks import run_double
    from refcomp_core.hosts.diffusers_flux import double_view
    if not budget.allows("torch.compile", 100 if dev.cuda else 30):
        return
    backend = "inductor" if dev.cuda else "eager"           # the dry run traces, it does not generate code
    dims, n = s.dims, s.boxes[-1]
    block = model.transformer_blocks[0]
    view = double_view(block, dims.heads)
    img, txt, vec = block_inputs(dims, dev.device, next(model.parameters()).dtype)
    diff_rope, rope = ropes(dims, dev.device)
    sc = scene(adapter, s, n)
    with torch.no_grad():
        call = make_call(adapter, build_state(adapter, sc.layout, sc.features), dims, dev.device)
    vanilla = lambda: block(img, txt, vec, diff_rope)                                 # noqa: E731
    patched = lambda: run_double(view, img, txt, vec, rope, call.pathways, vanilla=None)   # noqa: E731
    with torch.inference_mode():
        patched()                       # builds the layout's tensors (packing, block mask) eagerly, once
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    fns = {"vanilla": vanilla, "patched": patched, "vanilla_compiled": torch.compile(vanilla, backend=backend),
           "patched_compiled": torch.compile(patched, backend=backend)}
    with torch.inference_mode():
        fns["vanilla_compiled"]()
        fns["patched_compiled"]()
    compile_s = time.perf_counter() - t0
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    notes = [f"Compiling both ({backend}) took {compile_s:.0f} s with {breaks} graph breaks (0 expected: "
             "tests/test_compile_friendly.py). The patched block has static shapes per layout (packed length, "
             "block mask and index tensors are built once per layout, here before compiling)."]
    graphs = _cuda_graphs(patched, notes) if dev.cuda else None
    if graphs is not None:
        fns["patched_graphs"] = graphs
    times = time_interleaved(fns, repeats=max(s.repeats, 5), warmup=1, device=dev.device)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.wall.items()}
    rows = [["double block, 50 boxes", "eager", "torch.compile (default mode)", "compiled / eager"],
            ["vanilla", f"{ms['vanilla']:.2f} ms", f"{ms['vanilla_compiled']:.2f} ms",
             ratio(times.ratio("vanilla_compiled", "vanilla"))],
            ["patched (mod + assemble)", f"{ms['patched']:.2f} ms", f"{ms['patched_compiled']:.2f} ms",
             ratio(times.ratio("patched_compiled", "patched"))],
            ["patched / vanilla", ratio(times.ratio("patched", "vanilla")),
             ratio(times.ratio("patched_compiled", "vanilla_compiled")), ""]]
    if graphs is not None:
        rows.append(["patched, CUDA graphs (mode reduce-overhead)", "", f"{ms['patched_graphs']:.2f} ms",
                     ratio(times.ratio("patched_graphs", "patched"))])
    rep.table("torch.compile of the double block", rows, notes)


def _cuda_graphs(fn: Callable[[], Any], notes: list[str]) -> Callable[[], Any] | None:
    """fn compiled with CUDA graphs (one replay per call; outputs are not kept), or None with a note."""
    import torch
    compiled = torch.compile(fn, mode="reduce-overhead")

    def replay() -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled()
    try:
        with torch.inference_mode():
            for _ in range(3):                                  # record, then replay
                replay()
        return replay
    except Exception as err:          # the report records why graphs did not work
        notes.append(f"CUDA graphs (reduce-overhead) failed: {type(err).__name__}: {str(err)[:300]}")
        return None
