"""Sampling controls a ComfyUI user expects: strength, windows, uncond."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Controls:
    """Per-sampling-run switches (DESIGN §3.3).

    Windows are (start, end) fractions of the schedule, 0 = first step. The layout
    branch runs while start <= progress <= end; so does the modulation pathway.
    `mask_margin` (tokens) softens FG modulation masks; 0 gives hard boxes.
    `layout` / `modulation` switch a pathway off entirely (training stage 1 runs
    without modulation).
    """

    strength: float = 1.0
    layout_window: tuple[float, float] = (0.0, 0.3)
    modulation_window: tuple[float, float] = (0.0, 1.0)
    apply_to_uncond: bool = False
    mask_margin: float = 1.0
    layout: bool = True
    modulation: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 10.0:
            raise ValueError(f"Controls.strength must be in [0, 10], got {self.strength}")
        for name in ("layout_window", "modulation_window"):
            start, end = getattr(self, name)
            if not 0.0 <= start <= end <= 1.0:
                raise ValueError(f"Controls.{name} must satisfy 0 <= start <= end <= 1, got {(start, end)}; "
                                 "start/end are fractions of the sampling schedule")
            object.__setattr__(self, name, (float(start), float(end)))
        if self.mask_margin < 0:
            raise ValueError(f"Controls.mask_margin must be >= 0 tokens, got {self.mask_margin}")

    def layout_on(self, progress: float) -> bool:
        return self.layout and self.strength > 0 and self.layout_window[0] <= progress <= self.layout_window[1]

    def modulation_on(self, progress: float) -> bool:
        return (self.modulation and self.strength > 0
                and self.modulation_window[0] <= progress <= self.modulation_window[1])
