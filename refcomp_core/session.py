"""`RefCompSession`: one sampling run (or one training forward) as the hosts see it.

It maps batch rows to composition states (None = leave the row to vanilla FLUX, e.g.
unconditioned chunks), tracks where the run is in the schedule for the windows, picks the
active pathways of each block call, and carries what travels between blocks within one
transformer forward (the feedback bridge, InstanceAssemble's layout tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .adapter import RefCompAdapter
from .controls import Controls
from .geometry import TokenGrid
from .pathways.assemble import AssembleAttn
from .pathways.base import Pathway
from .pathways.instanceassemble import IABranch, ia_index, ia_step_active
from .pathways.token_mod import FgModulation
from .rope import Rope, rope_from_ids
from .state import CompositionState

Rows = tuple[int, int]


@dataclass
class RefCompSession:
    """adapter + states + controls. `states` is one state for every row, or one per row.

    progress: the fraction of the schedule done (drives RefComp's windows); step / num_steps:
    the step index and count when the host knows them (InstanceAssemble's window is defined on
    the step index; without them it falls back to progress).
    """

    adapter: RefCompAdapter
    states: CompositionState | Sequence[CompositionState | None] | None
    controls: Controls = field(default_factory=Controls)
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: float = 10000.0
    progress: float = 0.0
    step: int | None = None
    num_steps: int | None = None
    _carry: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _centres: dict[tuple, Rope] = field(default_factory=dict, repr=False)

    def begin_forward(self) -> None:
        """Call at the start of each transformer forward: what blocks carry restarts."""
        self._carry.clear()

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

    # --- windows ----------------------------------------------------------------------------
    def layout_on(self) -> bool:
        c = self.controls
        if self.adapter.config.layout_pathway == "instanceassemble" and self.step is not None and self.num_steps:
            return c.layout and c.strength > 0 and ia_step_active(self.step, self.num_steps, c.layout_window)
        return c.layout_on(self.progress)

    # --- pathways of one block call -----------------------------------------------------------
    def pathways(self, state: CompositionState | None, grid: TokenGrid, block: int, rows: Rows,
                 device: torch.device, *, double: bool) -> list[Pathway]:
        """The active pathways of one block call on rows [start, stop); empty = run the block vanilla."""
        if state is None or state.n == 0:
            return []
        out: list[Pathway] = []
        cfg, c = self.adapter.config, self.controls
        if cfg.identity and state.n_fg and c.modulation_on(self.progress):
            if double or torch.is_grad_enabled() or bool(self.adapter.single_gate.gate[block] != 0):
                index = state.grid(grid, c.mask_margin, device)
                out.append(FgModulation(adapter=self.adapter, state=state, index=index, block=block,
                                        strength=c.strength, feedback=self._carry.get((*rows, "fb", block)),
                                        store_feedback=self._store(rows, "fb", block + 1)))
        if not self.layout_on():
            return out
        if cfg.layout_pathway == "instanceassemble":
            key = str(block) if double else f"s{block}"
            if key in self.adapter.lora:
                order = block if double else cfg.num_double_blocks + block
                index = ia_index(state, grid, cfg.instanceassemble.dense_k, device)
                rope = self._rope(("ia", id(state), grid, str(device)), lambda: index.centre_ids)
                out.append(IABranch(adapter=self.adapter, state=state, index=index, key=key, scale=c.strength,
                                    centre_rope=rope, lam_in=self._latest(rows, "lam", order),
                                    store_lam=self._store(rows, "lam", order + 1)))
        elif double and self.adapter.is_layout_block(block):
            index = state.grid(grid, c.mask_margin, device)
            rope = self._rope(("assemble", id(state), grid, str(device)), lambda: torch.cat(
                [torch.zeros_like(index.centres[:, :1]), index.centres], dim=-1))
            out.append(AssembleAttn(adapter=self.adapter, state=state, index=index, block=block, strength=c.strength,
                                    centre_rope=rope))
        return out

    def _store(self, rows: Rows, name: str, order: int):
        """A setter for what block `order - 1` passes on. Keyed by block, never overwritten, so a
        gradient-checkpoint recomputation of a block reads the same input."""
        def store(value: torch.Tensor) -> None:
            self._carry[(*rows, name, order)] = value
        return store

    def _latest(self, rows: Rows, name: str, order: int) -> torch.Tensor | None:
        """The newest value of `name` stored for a block before `order`, or None."""
        keys = [k[3] for k in self._carry if k[:3] == (*rows, name) and k[3] <= order]
        return self._carry[(*rows, name, max(keys))] if keys else None

    def _rope(self, key: tuple, ids: "Callable[[], torch.Tensor]") -> Rope:
        """RoPE of instance tokens at (0, row, col) position ids (n, 3), cached per state, grid and device."""
        if key not in self._centres:
            pos = ids()
            if len(self.axes_dim) != pos.shape[1]:
                pos = pos[:, :len(self.axes_dim)] if len(self.axes_dim) < pos.shape[1] else \
                    torch.cat([pos, pos.new_zeros(pos.shape[0], len(self.axes_dim) - pos.shape[1])], dim=-1)
            self._centres[key] = rope_from_ids(pos, self.axes_dim, self.theta)
        return self._centres[key]
