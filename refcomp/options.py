"""The sampling settings of `refcomp compose`, each checked (naming its flag) before a model loads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refcomp_core import Controls
from refcomp_core.errors import UsageError
from refcomp_core.limits import MAX_GUIDANCE, MAX_STEPS
from refcomp_core.values import finite_float, show, valid_unicode
from refcomp_core.xverse import PRESETS
from refcomp_core.xverse.spans import T5_LENGTH


def check_int(flag: str, value: Any, low: int, high: int, hint: str = "") -> int:
    """`value` when it is an int in [low, high]; UsageError naming `flag` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{flag}: expected an integer in [{low}, {high}], got {show(value)}"
                         + (f" {hint}" if hint else ""))
    return value


def check_number(flag: str, value: Any, low: float, high: float) -> float:
    """`value` as a float when it is finite and in [low, high]; UsageError naming `flag` otherwise."""
    number = finite_float(value)
    if number is None or not low <= number <= high:
        raise UsageError(f"{flag}: expected a finite number in [{low:g}, {high:g}], got {show(value)}")
    return number


@dataclass(frozen=True)
class ComposeOptions:
    """Sampling settings. Windows are (start, end) fractions of the schedule.

    max_sequence_length: T5 tokens of the prompt; None = 512, or XVerse's exact 128 when XVerse runs.
    xverse_preset: the XVerse entry point whose settings to use (`PRESETS`: cli, demo, benchmark);
    id_refs: reference indices that are people (XVerse's weight_id); xverse_confine: RefComp's
    experimental confinement of each identity reference to its box in the single blocks."""

    prompt: str = ""
    steps: int = 28
    guidance: float = 3.5
    seed: int = 0
    strength: float = 1.0
    layout_window: tuple[float, float] = (0.0, 0.3)
    modulation_window: tuple[float, float] = (0.0, 1.0)
    max_sequence_length: int | None = None
    xverse_preset: str = "cli"
    id_refs: tuple[int, ...] = ()
    xverse_confine: bool = False

    def __post_init__(self) -> None:
        """Every value is checked here, naming its `refcomp compose` flag, before a model is loaded."""
        check_int("--steps", self.steps, 1, MAX_STEPS)
        if self.max_sequence_length is not None:
            check_int("--max-sequence-length", self.max_sequence_length, 1, 512, "(FLUX.1-dev 512, schnell 256)")
        if self.xverse_preset not in PRESETS:
            raise UsageError(f"--xverse-preset: {show(self.xverse_preset)} is not one of {sorted(PRESETS)}")
        if not isinstance(self.id_refs, (tuple, list)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.id_refs):
            raise UsageError(f"--id-refs: expected reference indices (integers >= 0) such as 0,2, got "
                             f"{show(self.id_refs)}")
        check_int("--seed", self.seed, 0, 2 ** 64 - 1)
        check_number("--guidance", self.guidance, 0.0, MAX_GUIDANCE)
        check_number("--strength", self.strength, 0.0, 10.0)
        for flag, window in (("--layout-window", self.layout_window), ("--modulation-window", self.modulation_window)):
            if not isinstance(window, (tuple, list)) or len(window) != 2:
                raise UsageError(f"{flag}: expected two numbers START END, got {show(window)}")
            start = check_number(flag, window[0], 0.0, 1.0)
            if not start <= check_number(flag, window[1], 0.0, 1.0):
                raise UsageError(f"{flag}: START {start} is after END {window[1]}; both are fractions of the "
                                 "schedule, START <= END")
        if not isinstance(self.prompt, str) or not valid_unicode(self.prompt):
            raise UsageError("--prompt: expected plain text (valid Unicode)")

    def controls(self) -> Controls:
        return Controls(strength=self.strength, layout_window=tuple(self.layout_window),
                        modulation_window=tuple(self.modulation_window))

    def sequence_length(self, xverse: bool) -> int:
        """T5 tokens of the prompt: XVerse binds its offsets to exactly 128."""
        if not xverse:
            return self.max_sequence_length or 512
        if self.max_sequence_length not in (None, T5_LENGTH):
            raise UsageError(f"--max-sequence-length: XVerse encodes the prompt at exactly {T5_LENGTH} T5 tokens (its "
                             f"offsets are bound to those), got {self.max_sequence_length}; omit the flag or pass "
                             f"{T5_LENGTH}")
        return T5_LENGTH
