"""One prepared GPU report (issue 13): the patched FLUX step against vanilla on a random full-size
FLUX.1-dev transformer, written to bench/GPU.md. One call, about 4-5 minutes on an H200.

    python bench/gpu_report.py                      # CUDA, bf16, 1024x1024 (4096 image + 512 text tokens)
    python bench/gpu_report.py --dry-run --out X.md # CPU, tiny config: the same code end to end (a test)

What it measures (each ratio from timings interleaved in one process):
- one transformer forward: vanilla; RefComp inside the layout window (Assemble-Attn + modulation) and
  outside it (modulation only); the 28-step run computed from the two (30 % window); extra peak
  memory; the InstanceAssemble pathway (a random adapter in its format) likewise; 18 and 50 boxes;
- one double block: patched / vanilla, and the ATen ops and GPU kernels one call dispatches;
- one training step of each stage (batch 1, gradient checkpointing, AdamW, the trainer's attention
  backend choice; flow loss only) against the vanilla forward + backward floor;
- cuDNN attention under gradient checkpointing: minimal probes (`training.sdpa_probe`) and the
  full-size transformer, each in its own process (an illegal memory access kills the process);
- torch.compile of the double block, vanilla and patched, if time is left.
Sections are skipped, and say so, when the time budget (--budget, default 280 s) runs out.

What to bring to a bare GPU machine: torch with CUDA (2.5+, for flex_attention; its triton) and
this checkout are assumed. Everything else must be carried: diffusers (0.42.1 tested) with its
dependencies, and einops. Build the folder where there is network, for the GPU machine's Python:

    pip install --target bench/.gpu_deps --python-version 3.12 --only-binary=:all: \\
        --platform manylinux_2_28_x86_64 diffusers==0.42.1 einops

and carry `bench/.gpu_deps` (git-ignored) with the checkout; `--deps DIR` (default: that folder,
when present) is put first on sys.path. The script checks its imports before it builds anything.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
log = logging.getLogger("gpu_report")
GOALS = {"in18": 1.08, "in50": 1.15, "out": 1.03, "run50": 1.06, "vram_gb": 4.0, "train50": 1.3}
PROBES = ("sdpa", "sdpa_ckpt", "sdpa_layout_ckpt", "block_ckpt")


def _paths(deps: str | None) -> list[str]:
    """Put this checkout (refcomp_core, training, bench) and the carried dependencies first on
    sys.path.  -> those paths (the probes' child processes get them too)"""
    folder = Path(deps) if deps else HERE / ".gpu_deps"
    paths = [str(folder)] * folder.is_dir() + [str(REPO), str(HERE)]
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    return paths


def check_imports() -> None:
    missing = []
    for name in ("torch", "einops", "diffusers"):
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    if missing:
        raise SystemExit("gpu_report: cannot import " + ", ".join(missing) + ". Carry them as the docstring of "
                         "bench/gpu_report.py says (a `pip install --target` folder passed with --deps).")


@dataclass
class Budget:
    """Wall-clock budget of the whole report; sections ask before they start."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, section: str, needs: float) -> bool:
        if self.left() >= needs:
            return True
        self.skipped.append(f"{section} (needs about {needs:.0f} s, {max(0, self.left()):.0f} s left)")
        log.warning("skipping %s: time budget", section)
        return False


@dataclass
class Report:
    """What GPU.md shows: header lines, then titled tables (a list of rows each) and notes."""

    header: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[list[str]], list[str]]] = field(default_factory=list)

    def table(self, title: str, rows: list[list[str]], notes: list[str] | None = None) -> None:
        self.sections.append((title, rows, notes or []))

    def markdown(self) -> str:
        out = ["# GPU report (`bench/gpu_report.py`)", "", *self.header, ""]
        for title, rows, notes in self.sections:
            out += [f"## {title}", ""]
            if rows:
                out += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
                out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
                out.append("")
            out += [*notes, ""] if notes else []
        return "\n".join(out)


def ratio(x: float) -> str:
    return f"{x:.3f}x"


def goal(value: float, limit: float | None) -> str:
    return "" if limit is None else f"<= {limit:.2f}x: {'met' if value <= limit else 'NOT met'}"


class Device:
    """Timing, memory and kernel counts on CUDA; CPU stand-ins for the dry run."""

    def __init__(self, device: Any) -> None:
        import torch
        self.torch, self.device, self.cuda = torch, device, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak_gb(self, fn: Callable[[], Any], *, inference: bool = True) -> float | None:
        """Peak allocated memory while fn runs (GB), None off CUDA."""
        if not self.cuda:
            return None
        torch = self.torch
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(inference):
            fn()
        self.sync()
        return torch.cuda.max_memory_allocated() / 2 ** 30

    def kernels(self, fn: Callable[[], Any]) -> int | None:
        """Device kernels (and copies) one call launches, from the profiler; None off CUDA."""
        if not self.cuda:
            return None
        from torch.profiler import ProfilerActivity, profile
        with self.torch.inference_mode():
            fn()
            self.sync()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                self.sync()
        return sum(1 for e in prof.events() if e.device_type == self.torch.autograd.DeviceType.CUDA)


def hotpath_for(dry: bool):
    """The dry run takes CUDA's (fused) path on CPU, so it checks the code a GPU runs."""
    from refcomp_core.blocks import hotpath
    return hotpath.force("fused" if dry else None)


def environment(dev: Device, dry: bool) -> list[str]:
    torch = dev.torch
    from refcomp_core.blocks import hotpath
    gpu = torch.cuda.get_device_name(dev.device) if dev.cuda else "none (CPU)"
    lines = [f"- **Date:** {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- **Device:** {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version() if dev.cuda else 'n/a'}",
             f"- **Hot path:** {'fused (flex_attention)' if hotpath.fused(dev.device) else 'loop'}"]
    if dry:
        lines.insert(0, "**DRY RUN** on CPU with a tiny config: the numbers mean nothing; this checks the script.")
    return lines


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


def probe_section(rep: Report, dev: Device, budget: Budget, dry: bool, paths: list[str]) -> None:
    """Each probe in its own process; the full-size transformer last."""
    rows = [["probe (cuDNN attention enabled)", "result"]]
    device = "cuda" if dev.cuda else "cpu"
    cases = [(case, [sys.executable, "-m", "training.sdpa_probe", case, "--device", device], 90) for case in PROBES]
    cases.append(("transformer_ckpt", [sys.executable, str(HERE / "gpu_report.py"), "--probe-transformer",
                                       *(["--dry-run"] if dry else [])], 150))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    for case, cmd, needs in cases:
        if not budget.allows(f"probe {case}", min(needs, 30)):
            continue
        try:
            out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=max(10, min(needs, budget.left())))
            lines = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("PROBE")]
            result = lines[-1] if lines else f"exit {out.returncode}: {(out.stderr or out.stdout)[-300:]!r}"
        except subprocess.TimeoutExpired:
            result = "timed out"
        rows.append([case, result.replace("|", "/")])
    rep.table("cuDNN attention under gradient checkpointing", rows, [
        "The first three force cuDNN attention; block_ckpt and transformer_ckpt run torch's default backends "
        "with cuDNN attention enabled (transformer_ckpt: the full-size model, gradient checkpointing, bf16 "
        "autocast, forward + backward: the failure of issue 13). Each runs in its own process."])


def probe_transformer(dry: bool) -> int:
    """Child process: the full-size transformer, gradient checkpointing, torch's default backends."""
    import torch
    from gpu_parts import DRY, FULL, build_transformer, flux_inputs, training_step
    s = DRY if dry else FULL
    device = torch.device("cpu" if dry else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(True)
    t0 = time.perf_counter()
    try:
        model = build_transformer(s, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        floor = training_step(model, None, None, 1, flux_inputs(s, device, next(model.parameters()).dtype), device)
        floor()
        floor()
        if device.type == "cuda":
            torch.cuda.synchronize()
    except Exception as err:         # the report needs the message, whatever the device raised
        print(f"PROBE transformer_ckpt error {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return 1
    print(f"PROBE transformer_ckpt ok {time.perf_counter() - t0:.2f} s")
    return 0


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
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    fns = {"vanilla": vanilla, "patched": patched, "vanilla_compiled": torch.compile(vanilla, backend=backend),
           "patched_compiled": torch.compile(patched, backend=backend)}
    with torch.inference_mode():
        fns["vanilla_compiled"]()
        fns["patched_compiled"]()
    compile_s = time.perf_counter() - t0
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    times = time_interleaved(fns, repeats=max(s.repeats, 5), warmup=1, device=dev.device)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.wall.items()}
    rows = [["double block, 50 boxes", "eager", "torch.compile (default mode)", "compiled / eager"],
            ["vanilla", f"{ms['vanilla']:.2f} ms", f"{ms['vanilla_compiled']:.2f} ms",
             ratio(times.ratio("vanilla_compiled", "vanilla"))],
            ["patched (mod + assemble)", f"{ms['patched']:.2f} ms", f"{ms['patched_compiled']:.2f} ms",
             ratio(times.ratio("patched_compiled", "patched"))],
            ["patched / vanilla", ratio(times.ratio("patched", "vanilla")),
             ratio(times.ratio("patched_compiled", "vanilla_compiled")), ""]]
    rep.table("torch.compile of the double block", rows, [
        f"Compiling both ({backend}) took {compile_s:.0f} s with {breaks} graph breaks. The patched block has "
        "static shapes per layout (packed length, block mask and index tensors are built once per layout)."])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny config, 1 repeat (checks the script)")
    p.add_argument("--out", default=str(HERE / "GPU.md"), help="the report (default bench/GPU.md)")
    p.add_argument("--deps", default=None, help="folder of carried packages (default bench/.gpu_deps if present)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole report (default 280; 3600 for a dry run)")
    p.add_argument("--probe-transformer", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paths = _paths(args.deps)
    check_imports()
    if args.probe_transformer:
        return probe_transformer(args.dry_run)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch
    from gpu_parts import DRY, FULL, build_transformer, flux_inputs, ia_adapter, refcomp_adapter
    budget = Budget(args.budget or (3600.0 if args.dry_run else 280.0))
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_report: no CUDA device; use --dry-run to check the script on CPU")
    s = DRY if args.dry_run else FULL
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    dev = Device(device)
    with hotpath_for(args.dry_run):
        rep = Report(header=environment(dev, args.dry_run))
    t0 = time.perf_counter()
    model = build_transformer(s, device, dtype)
    inputs = flux_inputs(s, device, dtype)
    adapters = {"refcomp": refcomp_adapter(model, s, device, dtype), "ia": ia_adapter(model, s, device, dtype)}
    f = s.flux
    rep.header += [f"- **Setting:** random FLUX.1 transformer ({f['num_layers']} double + {f['num_single_layers']} "
                   f"single blocks, {f['num_attention_heads']} x {f['attention_head_dim']}), {str(dtype)[6:]}, "
                   f"{s.grid}x{s.grid} image tokens + {s.text} text tokens, seeded boxes with sides "
                   f"{s.side_min}-{s.side_max} tokens, every other box FG; random adapters (every weight "
                   f"random); built in {time.perf_counter() - t0:.0f} s; {s.repeats} interleaved repeats."]
    sections: list[Callable[[], Any]] = [
        lambda: transformer_section(rep, dev, model, adapters, s, inputs, budget),
        lambda: training_section(rep, dev, model, adapters["refcomp"], s, inputs, budget),
        lambda: probe_section(rep, dev, budget, args.dry_run, paths),
        lambda: block_section(rep, dev, model, adapters["refcomp"], s, budget),
        lambda: compile_section(rep, dev, model, adapters["refcomp"], s, budget)]
    with hotpath_for(args.dry_run):
        for section in sections:
            try:
                section()
            except Exception as err:      # one failing section must not lose the others' figures
                if args.dry_run:
                    raise
                log.exception("section failed")
                budget.skipped.append(f"a section failed: {type(err).__name__}: {err}")
    rep.table("Notes", [], [f"- Skipped: {x}" for x in budget.skipped] +
              [f"- Total {time.perf_counter() - budget.start:.0f} s of a {budget.seconds:.0f} s budget."])
    Path(args.out).write_text(rep.markdown(), encoding="utf-8")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
