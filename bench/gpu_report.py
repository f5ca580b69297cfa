"""One prepared GPU report (issue 13): the patched FLUX step against vanilla on a random full-size
FLUX.1-dev transformer, written to bench/GPU.md. One call of at most 5 minutes: sections run in order
of importance within a 280 s budget, and those that would not fit are skipped and listed. Not yet
run on a GPU (the session that wrote it had none): its first run is the acceptance measurement.

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

What to bring to a bare GPU machine: torch with CUDA (2.5+, for flex_attention; its triton), pip and
this checkout are assumed. Everything else is carried as wheels: diffusers (0.42.1 tested) with its
dependencies, and einops. Download them where there is network, for the GPU machine's Python:

    pip download --dest bench/.gpu_wheels --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 diffusers==0.42.1 einops          # about 40 MB

and carry `bench/.gpu_wheels` (git-ignored; a device call carries up to 64 MiB). When diffusers or
einops is missing, the script installs those wheels offline into `bench/.gpu_deps` (`pip install
--no-index --target`, checked: they install and import with nothing else) and puts that folder first
on sys.path; `--deps DIR` names an existing `pip install --target` folder instead. It checks its
imports before it builds anything.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import subprocess
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


def missing_imports() -> list[str]:
    missing = []
    for name in ("torch", "einops", "diffusers"):
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    return missing


def ensure_imports(wheels: Path, deps: Path) -> None:
    """Install the carried wheels offline into `deps` when an import is missing; exit naming what is."""
    missing = missing_imports()
    if missing and not any(m.startswith("torch") for m in missing) and wheels.is_dir():
        log.warning("installing %s from %s into %s", ", ".join(m.split()[0] for m in missing), wheels, deps)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
                        "--target", str(deps), "diffusers", "einops"], check=True)
        if str(deps) not in sys.path:
            sys.path.insert(0, str(deps))
        importlib.invalidate_caches()
        missing = missing_imports()
    if missing:
        raise SystemExit("gpu_report: cannot import " + ", ".join(missing) + ". Carry the wheels as the docstring "
                         "of bench/gpu_report.py says (bench/.gpu_wheels), or pass --deps / --wheels.")


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
    p.add_argument("--deps", default=None, help="folder of installed packages (default bench/.gpu_deps)")
    p.add_argument("--wheels", default=str(HERE / ".gpu_wheels"),
                   help="carried wheels installed into --deps when an import is missing (default bench/.gpu_wheels)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole report (default 280; 3600 for a dry run)")
    p.add_argument("--probe-transformer", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paths = _paths(args.deps)
    ensure_imports(Path(args.wheels), Path(args.deps) if args.deps else HERE / ".gpu_deps")
    paths = _paths(args.deps)                       # the deps folder may exist now
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
