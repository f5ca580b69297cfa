"""cuDNN attention under gradient checkpointing, for `bench/gpu_report.py` (issue 13): the minimal
probes of `training.sdpa_probe` and the full-size transformer, each in its own process (an illegal
memory access poisons the process's CUDA context).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_support import Budget, Device, Report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROBES = ("sdpa", "sdpa_ckpt", "sdpa_layout_ckpt", "block_ckpt")


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
