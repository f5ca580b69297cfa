"""Shared set-up for the DESIGN §7 benchmarks: dimensions, a random vanilla FLUX
double block, a randomized adapter, seeded layouts and an interleaved timer.

Every figure is a ratio of two timings taken in the same process, repeat by repeat
(interleaved, rotating order), and reported as the median of the per-repeat ratios,
so the noise of a shared CPU cancels as far as it can.

Axis letters: b batch, L text tokens, N image tokens, n instances, D width.
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from refcomp_core import Controls, InstanceFeatures, RefCompAdapter, RefCompConfig, RefCompSession, TokenGrid
from refcomp_core import build_state, parse_layout
from refcomp_core.pathways.assemble import AssembleAttn
from refcomp_core.pathways.base import Pathway
from refcomp_core.pathways.token_mod import FgModulation
from refcomp_core.hosts.diffusers_flux import canonical_rope
from refcomp_core.layout import TOKEN_PX
from refcomp_core.rope import Rope
from refcomp_core.state import CompositionState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchDims:
    """The benchmark setting. Defaults are DESIGN §7: FLUX width, 64x64 grid, 512 text tokens,
    box sides uniform in 8-32 tokens."""

    heads: int = 24
    head_dim: int = 128
    grid: int = 64
    text: int = 512
    side_min: int = 8
    side_max: int = 32
    lora_rank: int = 128

    def __post_init__(self) -> None:
        if self.head_dim % 2 or self.head_dim < 4:
            raise ValueError(f"BenchDims.head_dim must be even and >= 4, got {self.head_dim}")
        if not 1 <= self.side_min <= self.side_max <= self.grid:
            raise ValueError(f"BenchDims: box sides {self.side_min}-{self.side_max} must fit the "
                             f"{self.grid}x{self.grid} grid; lower --side-max or raise --grid")

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def axes_dim(self) -> tuple[int, int, int]:
        """FLUX's (16, 56, 56) split of a 128 head dim, generalised to any even head dim."""
        side = (self.head_dim - self.head_dim // 8) // 2 // 2 * 2
        return self.head_dim - 2 * side, side, side


def add_arguments(parser: argparse.ArgumentParser, *, boxes: tuple[int, ...] = (18, 50)) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median ratio is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    parser.add_argument("--boxes", type=int, nargs="+", default=list(boxes), help="instance counts")
    parser.add_argument("--quick", action="store_true", help="smoke test: 32x32 grid, 128 text tokens, 1 repeat")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default 24)")
    parser.add_argument("--head-dim", type=int, default=None, help="channels per head (default 128)")
    parser.add_argument("--grid", type=int, default=None, help="image token grid side (default 64)")
    parser.add_argument("--text", type=int, default=None, help="text tokens (default 512)")
    parser.add_argument("--lora-rank", type=int, default=None, help="Assemble-Attn LoRA rank (default 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def dims_from_args(args: argparse.Namespace) -> BenchDims:
    """BenchDims from the CLI; --quick shrinks the grid and text and scales the box sides with the grid."""
    base = BenchDims()
    grid = args.grid or (32 if args.quick else base.grid)
    scale = grid / base.grid
    return BenchDims(heads=args.heads or base.heads, head_dim=args.head_dim or base.head_dim, grid=grid,
                     text=args.text or (128 if args.quick else base.text),
                     side_min=max(1, round(base.side_min * scale)), side_max=max(1, round(base.side_max * scale)),
                     lora_rank=args.lora_rank or base.lora_rank)


def setup(args: argparse.Namespace) -> tuple[BenchDims, torch.device, torch.dtype]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.warmup = 1, 0
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    dims = dims_from_args(args)
    log.info("setting: D=%d (%dx%d), grid %dx%d, %d text tokens, box sides %d-%d, LoRA rank %d, %s %s, "
             "%d threads, %d repeats", dims.dim, dims.heads, dims.head_dim, dims.grid, dims.grid, dims.text,
             dims.side_min, dims.side_max, dims.lora_rank, device, str(dtype).replace("torch.", ""),
             torch.get_num_threads(), args.repeats)
    return dims, device, dtype


def vanilla_block(dims: BenchDims, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A diffusers FluxTransformerBlock at the given width with random (default-init) weights."""
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
    torch.manual_seed(seed)
    return FluxTransformerBlock(dims.dim, dims.heads, dims.head_dim).to(device, dtype).eval()


def inputs(dims: BenchDims, device: torch.device, dtype: torch.dtype, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """img (1, N, D), txt (1, L, D), vec (1, D)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(1, dims.grid ** 2, dims.dim, generator=g)
    txt = torch.randn(1, dims.text, dims.dim, generator=g)
    vec = torch.randn(1, dims.dim, generator=g)
    return img.to(device, dtype), txt.to(device, dtype), vec.to(device, dtype)


def ropes(dims: BenchDims, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], Rope]:
    """diffusers (cos, sin) over [txt | img] and the same as a canonical Rope."""
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    ids = torch.zeros(dims.text + dims.grid ** 2, 3)
    k = torch.arange(dims.grid ** 2)
    ids[dims.text:, 1] = (k // dims.grid).float()
    ids[dims.text:, 2] = (k % dims.grid).float()
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=list(dims.axes_dim))(ids.to(device))
    return (cos, sin), canonical_rope((cos, sin))


def seeded_boxes(n: int, dims: BenchDims, seed: int) -> list[tuple[float, float, float, float]]:
    """n token-aligned boxes with sides uniform in [side_min, side_max] tokens, normalized."""
    rng = random.Random(seed)
    g = dims.grid
    out = []
    for _ in range(n):
        w, h = rng.randint(dims.side_min, dims.side_max), rng.randint(dims.side_min, dims.side_max)
        c0, r0 = rng.randint(0, g - w), rng.randint(0, g - h)
        out.append((c0 / g, r0 / g, (c0 + w) / g, (r0 + h) / g))
    return out


def make_adapter(dims: BenchDims, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 scale: float = 0.02) -> RefCompAdapter:
    """A one-double-block adapter at full width, every weight random (no zero-init left)."""
    cfg = RefCompConfig.for_model(hidden_size=dims.dim, num_double_blocks=1, num_single_blocks=0,
                                  num_heads=dims.heads, lora_rank=dims.lora_rank)
    adapter = RefCompAdapter(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return adapter.to(device, dtype).eval()


def make_state(adapter: RefCompAdapter, boxes: list[tuple[float, float, float, float]], dims: BenchDims,
               seed: int = 0, num_refs: int = 4) -> CompositionState:
    """Every other instance FG (alpha 0.8), the rest BG (alpha 0.2), all with a reference."""
    side = dims.grid * TOKEN_PX
    inst = [{"box": list(b), "ref": i % num_refs, "alpha": 0.8 if i % 2 == 0 else 0.2} for i, b in enumerate(boxes)]
    layout = parse_layout({"version": 1, "width": side, "height": side, "instances": inst}, num_refs=num_refs,
                          max_instances=max(50, len(boxes)))
    cfg = adapter.config
    g = torch.Generator().manual_seed(seed)
    feats = InstanceFeatures(clip_image=torch.randn(num_refs, cfg.clip_dim, generator=g),
                             dino=torch.randn(num_refs, cfg.dino_dim, generator=g))
    with torch.no_grad():
        return build_state(adapter, layout, feats)


class BodyOnly(Pathway):
    """A pathway that does nothing inside the block: the runner then runs our block math with
    every pathway off (what "plain" measures)."""

    inside = True


@dataclass(frozen=True)
class BlockCall:
    """The active pathways of double block 0 for a batch of one row, and the Assemble-Attn one."""

    pathways: list[Pathway]
    assemble: AssembleAttn | None

    @property
    def index(self):
        return next(p.index for p in self.pathways if isinstance(p, (AssembleAttn, FgModulation)))


def make_call(adapter: RefCompAdapter, state: CompositionState, dims: BenchDims, device: torch.device, *,
              layout_on: bool = True, mod_on: bool = True) -> BlockCall:
    """The pathways of double block 0 for a batch of one row (switches drop a pathway)."""
    session = RefCompSession(adapter, state, Controls(layout_window=(0.0, 1.0)), axes_dim=dims.axes_dim)
    pathways = session.pathways(state, TokenGrid(dims.grid, dims.grid), 0, (0, 1), device, double=True)
    if not pathways:
        raise ValueError("make_call: the session left block 0 vanilla; the state needs instances")
    keep = [p for p in pathways if (layout_on or not isinstance(p, AssembleAttn))
            and (mod_on or not isinstance(p, FgModulation))]
    return BlockCall(keep or [BodyOnly()], next((p for p in keep if isinstance(p, AssembleAttn)), None))


@dataclass
class BlockBench:
    """What both block benchmarks start from: one random vanilla block, its view, a
    randomized adapter, seeded inputs and both rope layouts."""

    args: argparse.Namespace
    dims: BenchDims
    device: torch.device
    dtype: torch.dtype
    block: torch.nn.Module
    view: Any
    adapter: RefCompAdapter
    img: torch.Tensor                    # (1, N, D)
    txt: torch.Tensor                    # (1, L, D)
    vec: torch.Tensor                    # (1, D)
    diff_rope: tuple[torch.Tensor, torch.Tensor]
    rope: Rope

    def call_for(self, n: int, **switches: bool) -> tuple[CompositionState, BlockCall]:
        """The seeded n-box layout's state and its block call (`layout_on`, `mod_on` switches)."""
        state = make_state(self.adapter, seeded_boxes(n, self.dims, self.args.seed + n), self.dims, self.args.seed)
        return state, make_call(self.adapter, state, self.dims, self.device, **switches)


def block_bench(description: str, argv: list[str] | None = None,
                extra: Callable[[argparse.ArgumentParser], Any] | None = None) -> BlockBench:
    """Parse the shared arguments (plus a script's `extra` ones) and build the shared set-up
    (a diffusers double block)."""
    from refcomp_core.hosts.diffusers_flux import double_view
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    dims, device, dtype = setup(args)
    block = vanilla_block(dims, device, dtype, args.seed)
    img, txt, vec = inputs(dims, device, dtype, args.seed)
    diff_rope, rope = ropes(dims, device)
    return BlockBench(args, dims, device, dtype, block, double_view(block, dims.heads),
                      make_adapter(dims, device, dtype, args.seed), img, txt, vec, diff_rope, rope)


def box_tokens(state: CompositionState, call: BlockCall) -> tuple[int, int]:
    """(sum of box tokens, covered tokens) of a call's index lists."""
    index = call.assemble.index
    return sum(int(p.numel()) for p in index.asm_pos), int(index.asm_cov.numel())


@dataclass
class Timings:
    """Per-repeat seconds of each timed fn: wall clock and this process's CPU time (all threads)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def ratios(self, num: str, den: str, clock: str = "wall") -> list[float]:
        """time[num] / time[den] per repeat (the two taken in the same round)."""
        times = getattr(self, clock)
        return [a / b for a, b in zip(times[num], times[den])]

    def ratio(self, num: str, den: str) -> float:
        """Median over repeats of the wall-clock ratio."""
        return statistics.median(self.ratios(num, den))

    def medians(self) -> str:
        return ", ".join(f"{k} {statistics.median(v):.3f}s" for k, v in self.wall.items())


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int,
                     device: torch.device, inference: bool = True) -> Timings:
    """Time each fn `repeats` rounds, each round running every fn once in a rotated order
    (so no fn always runs first or after the same neighbour). `inference`: run under
    `torch.inference_mode` (False for training steps)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(fns)
    out = Timings({name: [] for name in names}, {name: [] for name in names})
    with torch.inference_mode(inference):
        for _ in range(warmup):
            for name in names:
                fns[name]()
        sync()
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                sync()
                w0, c0 = time.perf_counter(), time.process_time()
                fns[name]()
                sync()
                out.wall[name].append(time.perf_counter() - w0)
                out.cpu[name].append(time.process_time() - c0)
                log.debug("repeat %d %s %.3fs", r, name, out.wall[name][-1])
    return out


def report(label: str, times: Timings, num: str, den: str, note: str = "") -> None:
    """One parseable result line: `RATIO <label> = <median>x [min-max] best-of-N <x>, cpu-time <x>`.

    median: of the per-repeat wall-clock ratios; best-of-N: fastest num / fastest den (robust
    to other processes, which only ever add time); cpu-time: median per-repeat ratio of
    process CPU time (robust to being descheduled)."""
    wall = times.ratios(num, den)
    extra = ""
    if len(wall) > 1:
        best = min(times.wall[num]) / min(times.wall[den])
        cpu = statistics.median(times.ratios(num, den, "cpu"))
        extra = f" [{min(wall):.3f}-{max(wall):.3f}] best-of-{len(wall)} {best:.3f}x, cpu-time {cpu:.3f}x"
    log.info("RATIO %s = %.3fx%s%s", label, statistics.median(wall), extra, f"  ({note})" if note else "")


def report_value(label: str, value: float, note: str = "") -> None:
    """A computed ratio, same line format."""
    log.info("RATIO %s = %.3fx%s", label, value, f"  ({note})" if note else "")
