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
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
log = logging.getLogger("gpu_report")


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


def hotpath_for(dry: bool):
    """The dry run takes CUDA's (fused) path on CPU, so it checks the code a GPU runs."""
    from refcomp_core.blocks import hotpath
    return hotpath.force("fused" if dry else None)


def environment(dev: Any, dry: bool) -> list[str]:
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
        from gpu_probes import probe_transformer
        return probe_transformer(args.dry_run)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch
    from gpu_parts import DRY, FULL, build_transformer, flux_inputs, ia_adapter, refcomp_adapter
    from gpu_probes import probe_section
    from gpu_sections import block_section, compile_section, training_section, transformer_section
    from gpu_support import Budget, Device, Report
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
