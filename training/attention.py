"""Which attention (SDPA) backends a training run uses on its device (issue 13).

A full-size FLUX.1 run on an H200 (torch 2.11, CUDA 13) died with `CUDA error: an illegal memory
access` in the backward of a gradient-checkpointed forward with torch's default SDPA backends,
which include cuDNN attention; with cuDNN attention off the same steps ran, and a block's
forward + backward without checkpointing ran with it on. `TrainConfig.cudnn_attention` says what
to do on CUDA:

- `auto` (default): cuDNN attention off under gradient checkpointing, torch's defaults otherwise;
- `probe`: run `training.sdpa_probe` (checkpointed cuDNN attention at FLUX shapes) in a child
  process first, and keep cuDNN attention only if it passes (a crash there cannot take the run
  with it);
- `on` / `off`: as said.

Flash, memory-efficient and math attention stay as torch has them. One log line says the choice.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)
POLICIES = ("auto", "probe", "on", "off")
REPO = Path(__file__).resolve().parents[1]


def probe_cudnn(case: str = "sdpa_layout_ckpt", timeout: float = 180.0) -> tuple[bool, str]:
    """Run one probe case on CUDA with cuDNN attention forced, in a child process.
    -> (passed, the probe's last line or why it failed)"""
    cmd = [sys.executable, "-m", "training.sdpa_probe", case, "--device", "cuda"]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"probe {case} timed out after {timeout:.0f} s"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode == 0, lines[-1] if lines else f"probe exited {out.returncode}"


def choose_attention_backends(device: torch.device, *, gradient_checkpointing: bool, policy: str = "auto",
                              probe: Callable[[], tuple[bool, str]] = probe_cudnn) -> bool:
    """Set this process's cuDNN attention switch for training on `device`; logs one line.
    -> whether cuDNN attention is on (False off CUDA, where it does not exist)."""
    if policy not in POLICIES:
        raise ValueError(f"cudnn_attention: {policy!r} is not one of {list(POLICIES)}")
    if device.type != "cuda":
        log.info("attention: torch's SDPA backends on %s (cuDNN attention is CUDA only)", device)
        return False
    if policy == "probe":
        use, why = probe()
        why = f"the probe {'passed' if use else 'failed'} ({why})"
    elif policy == "auto":
        use = not gradient_checkpointing
        why = ("gradient checkpointing is on: cuDNN attention crashed its backward on an H200 (issue 13); "
               "set cudnn_attention: probe to test this machine" if gradient_checkpointing
               else "no gradient checkpointing")
    else:
        use, why = policy == "on", f"cudnn_attention: {policy}"
    torch.backends.cuda.enable_cudnn_sdp(use)
    names = [name for name, on in (("cuDNN", use), ("flash", torch.backends.cuda.flash_sdp_enabled()),
                                   ("memory-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                                   ("math", torch.backends.cuda.math_sdp_enabled())) if on]
    log.info("attention: SDPA backends %s; cuDNN attention %s: %s", ", ".join(names), "on" if use else "off", why)
    return use
