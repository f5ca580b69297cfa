"""`RefCompSession`: one sampling run (or one training forward) as the hosts see it.

It maps batch rows to composition states (None = leave the row to vanilla FLUX,
e.g. unconditioned chunks), tracks the schedule progress for the windows, and
carries the feedback bridge from one double block to the next.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from .adapter import RefCompAdapter
from .blocks.double import BlockCall
from .controls import Controls
from .geometry import TokenGrid
from .rope import Rope, rope_from_ids
from .state import CompositionState

RowStates = "CompositionState | Sequence[CompositionState | None] | None"


@dataclass
class RefCompSession:
    """adapter + states + controls. `states` is one state for every row, or one per row."""

    adapter: RefCompAdapter
    states: CompositionState | Sequence[CompositionState | None] | None
    controls: Controls = field(default_factory=Controls)
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: float = 10000.0
    progress: float = 0.0
    _feedback: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _centres: dict[tuple, Rope] = field(default_factory=dict, repr=False)

    def begin_forward(self) -> None:
        """Call at the start of each transformer forward: the feedback restarts at 0."""
        self._feedback.clear()

    def row_states(self, batch: int) -> list[CompositionState | None]:
        if self.states is None or isinstance(self.states, CompositionState):
            return [self.states] * batch
        if len(self.states) != batch:
            raise ValueError(f"RefCompSession has {len(self.states)} row states for a batch of {batch}")
        return list(self.states)

    def runs(self, batch: int) -> Iterator[tuple[int, int, CompositionState | None]]:
        """Contiguous row ranges sharing one state: (start, stop, state)."""
        states = self.row_states(batch)
        start = 0
        for i in range(1, batch + 1):
            if i == batch or states[i] is not states[start]:
                yield start, i, states[start]
                start = i

    def call(self, state: CompositionState | None, grid: TokenGrid, block: int, rows: tuple[int, int],
             device: torch.device, *, double: bool) -> BlockCall | None:
        """The BlockCall for rows of one block, or None when the block should run vanilla."""
        if state is None or state.n == 0:
            return None
        layout_on = double and self.controls.layout_on(self.progress) and self.adapter.is_layout_block(block)
        mod_on = self.controls.modulation_on(self.progress) and state.n_fg > 0
        if not (layout_on or mod_on):
            return None
        index = state.grid(grid, self.controls.mask_margin, device)
        return BlockCall(adapter=self.adapter, state=state, index=index, block=block, layout_on=layout_on,
                         mod_on=mod_on, strength=self.controls.strength,
                         feedback=self._feedback.get((*rows, block)) if double else None,
                         centre_rope=self._centre_rope(state, grid, device))

    def store_feedback(self, rows: tuple[int, int], block: int, feedback: torch.Tensor | None) -> None:
        """Keep block `block`'s feedback for block + 1. Keyed by block, not overwritten,
        so a gradient-checkpoint recomputation of a block reads the same input."""
        if feedback is not None:
            self._feedback[(*rows, block + 1)] = feedback

    def _centre_rope(self, state: CompositionState, grid: TokenGrid, device: torch.device) -> Rope:
        key = (id(state), grid, str(device))
        if key not in self._centres:
            centres = state.grid(grid, self.controls.mask_margin, device).centres            # (n, 2)
            ids = torch.cat([torch.zeros_like(centres[:, :1]), centres], dim=-1)             # (n, 3)
            ids = ids[:, :len(self.axes_dim)] if len(self.axes_dim) < 3 else \
                torch.cat([ids, ids.new_zeros(ids.shape[0], len(self.axes_dim) - 3)], dim=-1)
            self._centres[key] = rope_from_ids(ids, self.axes_dim, self.theta)
        return self._centres[key]
