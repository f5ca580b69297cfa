"""What the sections of `bench/gpu_report.py` share: the time budget, the report's tables, the
goals of issue 13 and the device's timers (CUDA, with CPU stand-ins for the dry run)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("gpu_report")
GOALS = {"in18": 1.08, "in50": 1.15, "out": 1.03, "run50": 1.06, "vram_gb": 4.0, "train50": 1.3}


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
