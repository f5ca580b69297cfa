"""Benchmark proxy: how many ATen ops one double block dispatches (issue 13, DESIGN §7).

On a GPU the patched block was launch-bound (618 kernel launches per call against 75 for the
vanilla block), and the count of dispatched ATen ops shows the same on any machine. This counts
them with a `TorchDispatchMode` for the vanilla diffusers block, our block math with every
pathway off ("plain"), a step outside the layout window ("mod") and one inside it ("full"),
on both hot paths (`refcomp_core.blocks.hotpath`): `loop` (CPU) and `fused` (CUDA, run here on
CPU with eager flex_attention, which counts as one op: on CUDA it is one compiled kernel).

Counts do not depend on the width, so the default is a small block (fast on CPU).

    python bench/op_count.py                     # 2 heads x 16, 32x32 grid, 18 and 50 instances
    python bench/op_count.py --heads 24 --head-dim 128 --grid 64 --text 512   # FLUX width (slow on CPU)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

log = logging.getLogger(__name__)

# ops that move no data (metadata, aliasing, no-op casts): not kernel launches on a GPU
NO_KERNEL = {"aten.detach", "aten.lift_fresh", "aten.alias", "aten.to", "aten._unsafe_view", "aten.empty",
             "aten.empty_like", "aten.new_empty", "aten.empty_strided", "aten.unflatten", "aten.reshape",
             "aten.flatten", "aten.chunk", "aten.split", "aten.unbind", "aten.contiguous"}


@dataclass(frozen=True)
class OpCount:
    """ops: every ATen op dispatched, by name; kernels: those that move data (not views,
    aliases or metadata; an upper bound on kernel launches, as a reshape may copy)."""

    ops: collections.Counter
    kernels: collections.Counter

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def launches(self) -> int:
        return sum(self.kernels.values())


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops run inside it (after autograd, so views count too)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.kernels: collections.Counter = collections.Counter()

    def record(self, name: str, kernel: bool = True) -> None:
        self.ops[name] += 1
        if kernel:
            self.kernels[name] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket)
        self.record(name, not (getattr(func, "is_view", False) or name in NO_KERNEL))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _flex_as_one_op(counter: OpCounter) -> Iterator[None]:
    """flex_attention is a higher-order op that does not run under a dispatch mode; count it as
    the one kernel it compiles to on CUDA and run it outside the counter."""
    from refcomp_core.blocks import packed
    real = packed._flex

    def counted(device: torch.device) -> Callable[..., torch.Tensor]:
        kernel = real(device)

        def call(*args: Any, **kwargs: Any) -> torch.Tensor:
            counter.record("flex_attention")
            with _disable_current_modes():
                return kernel(*args, **kwargs)
        return call

    packed._flex = counted
    try:
        yield
    finally:
        packed._flex = real


def count_ops(fn: Callable[[], Any]) -> OpCount:
    """Run fn once (after one untimed call, so per-layout caches are built) and count its ops."""
    with torch.inference_mode():
        fn()
        counter = OpCounter()
        with _flex_as_one_op(counter), counter:
            fn()
    return OpCount(counter.ops, counter.kernels)


def block_counts(b: Any, n: int) -> dict[str, dict[str, OpCount]]:
    """{path: {variant: OpCount}} for one `common.BlockBench` at n instances."""
    from common import make_call
    from refcomp_core.blocks import hotpath, run_double

    state, full = b.call_for(n)
    calls = {"plain": make_call(b.adapter, state, b.dims, b.device, layout_on=False, mod_on=False),
             "mod": make_call(b.adapter, state, b.dims, b.device, layout_on=False), "full": full}
    out: dict[str, dict[str, OpCount]] = {}
    for path in ("loop", "fused"):
        with hotpath.force(path):
            out[path] = {"vanilla": count_ops(lambda: b.block(b.img, b.txt, b.vec, b.diff_rope))}
            for name, call in calls.items():
                out[path][name] = count_ops(lambda call=call: run_double(b.view, b.img, b.txt, b.vec, b.rope,
                                                                         call.pathways, vanilla=None))
    return out


def main(argv: list[str] | None = None) -> None:
    from common import block_bench
    defaults = ["--heads", "2", "--head-dim", "16", "--grid", "32", "--text", "16", "--lora-rank", "4"]
    given = argv if argv is not None else __import__("sys").argv[1:]
    b = block_bench(__doc__.split("\n")[0], defaults + list(given))
    for n in b.args.boxes:
        counts = block_counts(b, n)
        for path, variants in counts.items():
            van = variants["vanilla"]
            for name, c in variants.items():
                log.info("OPS path=%s instances=%d %s: %d ATen ops (%.2fx vanilla), %d moving data (%.2fx)",
                         path, n, name, c.total, c.total / van.total, c.launches, c.launches / van.launches)
            top = variants["full"].kernels.most_common(8)
            log.info("OPS path=%s instances=%d full, most frequent: %s", path, n,
                     ", ".join(f"{k} {v}" for k, v in top))


if __name__ == "__main__":
    main()
