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
from .pathways.xverse import XVerseDouble, XVerseSingle, XVerseScales, XVerseState
from .rope import Rope, rope_from_ids
from .state import CompositionState
from .xverse.presets import VAE_SKIP, parse_schedule, schedule_value

Rows = tuple[int, int]


@dataclass
class XVerseRun:
    """An XVerse composition for one sampling run: its step-independent state, its LoRA per block
    ("<double>", "s<single>", "x" for x_embedder), the scales of the chosen preset, the VAE-skip
    intervals as fractions of the first timestep t0 (see `refs_on`), and `embed`: the host model's own
    x_embedder (packed latents -> tokens; XVerse adds its LoRA itself)."""

    state: XVerseState
    loras: dict
    scales: XVerseScales = field(default_factory=XVerseScales)
    vae_skip: str = VAE_SKIP
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None
    _on: dict = field(default_factory=dict, repr=False)

    def state_on(self, device: torch.device) -> XVerseState:
        """The state on `device`, moved once per device."""
        key = str(device)
        if key not in self._on:
            self._on[key] = self.state.to(device)
        return self._on[key]

    def refs_on(self, t: float | None, t0: float | None) -> bool:
        """XVerse's VAE-skip rule on the timestep value (window a-b: (1-b) t0 <= t <= (1-a) t0)."""
        if self.state.ref_latents is None or self.state.num_refs == 0:
            return False
        if t is None or t0 is None:
            return True
        return schedule_value(t, t0, parse_schedule(self.vae_skip)) == 0


@dataclass(frozen=True)
class RowKey:
    """What a run of batch rows is composed with: a RefComp state (or None) and whether XVerse acts."""

    state: CompositionState | None
    xverse: bool


@dataclass
class RefCompSession:
    """adapter + states + controls. `states` is one state for every row, or one per row.

    progress: the fraction of the schedule done (drives RefComp's windows); step / num_steps:
    the step index and count when the host knows them (InstanceAssemble's window is defined on
    the step index; without them it falls back to progress).
    """

    adapter: RefCompAdapter | None
    states: CompositionState | Sequence[CompositionState | None] | None
    controls: Controls = field(default_factory=Controls)
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: float = 10000.0
    progress: float = 0.0
    step: int | None = None
    num_steps: int | None = None
    xverse: XVerseRun | None = None
    xverse_rows: Sequence[bool] | None = None
    cond_vec: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    timestep: float | None = None
    t0: float | None = None
    _carry: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _centres: dict[tuple, Rope] = field(default_factory=dict, repr=False)
    _single_live: tuple[bool, ...] = field(default=(), repr=False)
    _refs_on: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._read_single_gates()
        self._decide_refs()

    def _decide_refs(self) -> None:
        """XVerse's VAE-skip decision for this call's timestep, made once in eager code (in a compiled
        region the schedule arithmetic on Python floats would be traced per block)."""
        self._refs_on = self.xverse is not None and self.xverse.refs_on(self.timestep, self.t0)

    def _read_single_gates(self) -> None:
        """Which single-block gates are non-zero, read once here (one small device sync) rather than
        per block inside the forward, where the data-dependent check would break a compiled graph."""
        a = self.adapter
        if a is not None and a.config.identity:
            self._single_live = tuple(bool(v) for v in (a.single_gate.gate.detach() != 0).tolist())

    def begin_forward(self, *, cond_vec: torch.Tensor | None = None, timestep: float | None = None,
                      t0: float | None = None, latents: torch.Tensor | None = None) -> None:
        """Call at the start of each transformer forward: what blocks carry restarts. XVerse also needs
        the conditioning at t = 0 (b, D), the packed latents before x_embedder (b, N, C), this call's
        timestep and the run's first one."""
        self._carry.clear()
        if not torch.compiler.is_compiling():   # traced (ComfyUI's compiled XVerse wrapper): read at construction
            self._read_single_gates()
        decide = timestep != self.timestep or (t0 is not None and t0 != self.t0)
        self.cond_vec, self.timestep, self.latents = cond_vec, timestep, latents
        if t0 is not None:
            self.t0 = t0
        if decide:                  # a host that read the timestep before the forward has decided already
            self._decide_refs()

    def row_states(self, batch: int) -> list[CompositionState | None]:
        if self.states is None or isinstance(self.states, CompositionState):
            return [self.states] * batch
        if len(self.states) != batch:
            raise ValueError(f"RefCompSession has {len(self.states)} row states for a batch of {batch}")
        return list(self.states)

    def runs(self, batch: int) -> Iterator[tuple[int, int, RowKey]]:
        """Contiguous row ranges composed alike: (start, stop, key)."""
        states = self.row_states(batch)
        xv = list(self.xverse_rows) if self.xverse_rows is not None else [True] * batch
        if len(xv) != batch:
            raise ValueError(f"RefCompSession has {len(xv)} XVerse row flags for a batch of {batch}")
        keys = [RowKey(s, self.xverse is not None and f) for s, f in zip(states, xv)]
        start = 0
        for i in range(1, batch + 1):
            if i == batch or keys[i].state is not keys[start].state or keys[i].xverse != keys[start].xverse:
                yield start, i, keys[start]
                start = i

    # --- windows ----------------------------------------------------------------------------
    def layout_on(self) -> bool:
        c = self.controls
        if self.adapter.config.layout_pathway == "instanceassemble" and self.step is not None and self.num_steps:
            return c.layout and c.strength > 0 and ia_step_active(self.step, self.num_steps, c.layout_window)
        return c.layout_on(self.progress)

    def phase(self) -> tuple[bool, bool, bool]:
        """This call's window decisions (modulation on, layout on, XVerse's references on). A compiled
        trace specializes on them; a host whose compiler drops guards on the session (ComfyUI's
        TorchCompileModel) keys its traces on this instead."""
        a = self.adapter
        return (a is not None and self.controls.modulation_on(self.progress), a is not None and self.layout_on(),
                self._refs_on)

    # --- pathways of one block call -----------------------------------------------------------
    def pathways(self, key: RowKey | CompositionState | None, grid: TokenGrid, block: int, rows: Rows,
                 device: torch.device, *, double: bool) -> list[Pathway]:
        """The active pathways of one block call on rows [start, stop); empty = run the block vanilla."""
        if not isinstance(key, RowKey):
            key = RowKey(key, False)
        out = self._refcomp_pathways(key.state, grid, block, rows, device, double=double)
        if key.xverse:
            out.append(self._xverse_pathway(block, rows, device, double=double))
        return out

    def _xverse_pathway(self, block: int, rows: Rows, device: torch.device, *, double: bool) -> Pathway:
        xv = self.xverse
        refs_on = self.cond_vec is not None and self._refs_on
        cond = self.cond_vec[rows[0]:rows[1]] if self.cond_vec is not None else None
        order = block if double else len(self.xverse.state.delta_block) + block
        common = dict(state=xv.state_on(device), loras=xv.loras, block=block, scales=xv.scales, refs_on=refs_on, cond_vec=cond,
                      r_in=self._latest(rows, "xverse_r", order), store_r=self._store(rows, "xverse_r", order + 1))
        if double:
            latents = self.latents[rows[0]:rows[1]] if (self.latents is not None and block == 0) else None
            return XVerseDouble(**common, embed=xv.embed, latents=latents)
        return XVerseSingle(**common)

    def _refcomp_pathways(self, state: CompositionState | None, grid: TokenGrid, block: int, rows: Rows,
                          device: torch.device, *, double: bool) -> list[Pathway]:
        if state is None or state.n == 0 or self.adapter is None:
            return []
        out: list[Pathway] = []
        cfg, c = self.adapter.config, self.controls
        if cfg.identity and state.n_fg and c.modulation_on(self.progress):
            if double or torch.is_grad_enabled() or self._single_live[block]:
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
