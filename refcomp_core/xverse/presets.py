"""Settings of XVerse's official entry points, its step schedules and reference positions
(WEIGHTS_COMPAT §2.1, §2.4, §2.6, §2.7).

XVerse's schedules are strings of windows "a-b:v[,a-b:v...]" on the timestep value t, not on the
step index: window a-b covers (1 - b) * t0 <= t <= (1 - a) * t0 with t0 the first timestep, and the
first window containing t gives its value. The VAE-skip default "0-0.05:1,0.8-1:1" drops the
reference tokens while t >= 0.95 t0 or t <= 0.2 t0; the text-stream offsets stay on.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

import torch
from einops import rearrange

VAE_SKIP = "0-0.05:1,0.8-1:1"


@dataclass(frozen=True)
class ScheduleWindow:
    """Part "start-end:value" of a schedule; start, end are fractions of the run (0 = t0, 1 = t = 0)."""

    start: float
    end: float
    value: float

    def contains(self, t: float, t0: float) -> bool:
        """(1 - end) t0 <= t <= (1 - start) t0, rounded to float32 as the original's tensors are (so that
        t = 200 lies in '0.8-1' at t0 = 1000)."""
        low, high = _f32(_f32(1 - self.end) * _f32(t0)), _f32(_f32(1 - self.start) * _f32(t0))
        return low <= _f32(t) <= high


def _f32(x: float) -> float:
    """x rounded to the nearest float32."""
    return struct.unpack("f", struct.pack("f", x))[0]


def parse_schedule(text: str) -> tuple[ScheduleWindow, ...]:
    """'0-0.05:1,0.8-1:1' -> its windows, in order. Raises ValueError naming the bad part."""
    windows = []
    for part in text.split(","):
        try:
            span, value = part.split(":")
            start, end = span.split("-")
            window = ScheduleWindow(float(start), float(end), float(value))
        except ValueError:
            raise ValueError(f"schedule {text!r}: part {part!r} is not 'start-end:value' (e.g. '0-0.05:1')") from None
        if not (0 <= window.start <= window.end <= 1):
            raise ValueError(f"schedule {text!r}: part {part!r} needs 0 <= start <= end <= 1")
        windows.append(window)
    return tuple(windows)


def schedule_value(t: float, t0: float, windows: Sequence[ScheduleWindow], default: float = 0.0) -> float:
    """The value of the first window containing timestep t (the original's order), else `default`."""
    for window in windows:
        if window.contains(float(t), float(t0)):
            return window.value
    return default


def vae_skip_steps(timesteps: Sequence[float] | torch.Tensor, t0: float | None = None,
                   intervals: str | Sequence[ScheduleWindow] = VAE_SKIP) -> frozenset[int]:
    """Indices of the steps whose reference tokens are dropped. timesteps: (T,) the sampler's timestep
    values in order (any scale: 0..1000 in diffusers, sigmas in ComfyUI); t0 defaults to timesteps[0]."""
    values = [float(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps)]
    if not values:
        return frozenset()
    windows = parse_schedule(intervals) if isinstance(intervals, str) else tuple(intervals)
    t0 = values[0] if t0 is None else float(t0)
    return frozenset(i for i, t in enumerate(values) if schedule_value(t, t0, windows) != 0)


@dataclass(frozen=True)
class XVersePreset:
    """The settings of one official XVerse entry point.

    lora_scale: g, the global LoRA scale (x_embedder, the text stream, the references' double-block LoRA).
    weight_id / weight_ip: λ of an ID (human) / other reference: the latents' attention logits to its
      tokens get + log λ in the single blocks; weight_global (1) is λ0 for the reference rows.
    latent_sblora_scale / condition_sblora_scale: absolute multipliers of the single blocks' q/k/v/proj_out
      LoRA for text + latents / for reference tokens (they replace g * alpha / rank).
    vae_skip: the schedule of steps without reference tokens. cond_size: the reference image side (px).
    """

    name: str
    lora_scale: float
    weight_id: float = 3.0
    weight_ip: float = 5.0
    weight_global: float = 1.0
    latent_sblora_scale: float = 0.85
    condition_sblora_scale: float = 1.3
    vae_skip: str = VAE_SKIP
    cond_size: int = 256
    width: int = 768
    height: int = 768
    steps: int = 28
    guidance: float = 3.5

    def __post_init__(self) -> None:
        for name in ("weight_id", "weight_ip", "weight_global"):
            if not getattr(self, name) > 0:
                raise ValueError(f"XVersePreset.{name} must be > 0 (it enters as log λ), got {getattr(self, name)!r}")
        for name in ("lora_scale", "latent_sblora_scale", "condition_sblora_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"XVersePreset.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.cond_size <= 0 or self.cond_size % 16:
            raise ValueError(f"XVersePreset.cond_size must be a positive multiple of 16, got {self.cond_size}")
        parse_schedule(self.vae_skip)

    def reference_lambda(self, is_id: bool) -> float:
        return self.weight_id if is_id else self.weight_ip

    def log_lambda(self, is_id: bool) -> float:
        return math.log(self.reference_lambda(is_id))

    def skip_steps(self, timesteps: Sequence[float] | torch.Tensor, t0: float | None = None) -> frozenset[int]:
        return vae_skip_steps(timesteps, t0, self.vae_skip)

    @property
    def reference_tokens(self) -> int:
        """Tokens one reference adds to every block it runs in (256 at cond_size 256)."""
        return (self.cond_size // 16) ** 2


# inference_single_sample.py (the README CLI) never passes ip_scale: g = 1. run_gradio.py and the
# benchmark eval use ip_scale "0-1:0.85". Everything else is shared.
PRESETS: dict[str, XVersePreset] = {
    "cli": XVersePreset(name="cli", lora_scale=1.0),
    "demo": XVersePreset(name="demo", lora_scale=0.85),
    "benchmark": XVersePreset(name="benchmark", lora_scale=0.85),
}


def reference_position_ids(index: int, cond_size: int = 256) -> torch.Tensor:
    """RoPE ids of reference `index` (0-based): (G*G, 3) float32 rows (0, r - G(i+1), c - G(i+1)),
    row-major over r, c in [0, G), G = cond_size / 16 ("diagonal": up-left of the canvas, one square
    per reference). The original keeps the ids in bf16, exact while |id| <= 256 (16 references at 256)."""
    if cond_size <= 0 or cond_size % 16:
        raise ValueError(f"cond_size must be a positive multiple of 16, got {cond_size}")
    if index < 0:
        raise ValueError(f"reference index must be >= 0, got {index}")
    g = cond_size // 16
    r, c = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    offset = g * (index + 1)
    ids = torch.stack([torch.zeros_like(r), r - offset, c - offset], dim=-1)          # (G, G, 3)
    return rearrange(ids, "r c k -> (r c) k").float()
