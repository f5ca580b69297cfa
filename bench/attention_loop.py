"""Benchmark: how to run the per-box attention of Assemble-Attn (DESIGN §3.1 step 4, "Hot path").

Times ways of attending within every [l_i ; box_i tokens] sequence, on the real box shapes of
the §7 setting, with random normed q/k/v at FLUX width, each with its gathers and the mean over
overlapping boxes:
- per-box: what CPUs run (`refcomp_core.pathways.assemble.per_box_attention`): one gather, one
  SDPA and one `index_add` per box;
- packed: what CUDA runs (`packed_instance_attention`): the sequences packed once (one gather per
  tensor), one SDPA per segment view here (with `--fused`, or on CUDA, one flex_attention call),
  one `index_add` out;
- bucketed: boxes with equal token counts batched into one SDPA per length;
- padded: every box padded to the longest with a key mask, one SDPA over all boxes.
Two layouts: the seeded one (sides uniform 8-32 tokens, so lengths rarely repeat) and
one where every box has the same size (bucketing's best case).

    python bench/attention_loop.py                  # D 3072, 64x64 grid, 50 boxes
    python bench/attention_loop.py --quick --heads 2 --head-dim 16   # smoke test

Axis letters: b batch, t covered tokens, n instances, m boxes in a bucket, l sequence, h heads, c head channels.
"""
from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from common import add_arguments, make_adapter, make_call, make_state, report, seeded_boxes, setup, time_interleaved
from refcomp_core.blocks import hotpath
from refcomp_core.pathways.assemble import AssembleInputs, packed_instance_attention, per_box_attention

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def _kv(x: AssembleInputs) -> tuple[Tensor, Tensor]:
    return torch.cat([x.lk, x.k], dim=1), torch.cat([x.lv, x.v], dim=1)              # (b, n + t, h, c)


@dataclass(frozen=True)
class Boxes:
    """The attention inputs and count (t,): boxes per covered token."""

    x: AssembleInputs
    count: Tensor

    @property
    def pos(self) -> list[Tensor]:
        return list(self.x.pos)


def per_box(b_: Boxes) -> Tensor:
    return per_box_attention(b_.x)


def packed(b_: Boxes) -> Tensor:
    return packed_instance_attention(b_.x)


def bucketed(b_: Boxes) -> Tensor:
    """Boxes of equal length share one SDPA call.  -> (b, t, h*c)"""
    x = b_.x
    b, t, h, c = x.q.shape
    n = x.lk.shape[1]
    k, v = _kv(x)
    acc = x.q.new_zeros(b, t, h, c)
    groups: dict[int, list[int]] = {}
    for i, pos in enumerate(b_.pos):
        groups.setdefault(pos.numel(), []).append(i)
    for ids in groups.values():
        pos = torch.cat([b_.pos[i] for i in ids])                                     # (m * l,)
        kv = torch.cat([torch.cat([b_.pos[i].new_tensor([i]), b_.pos[i] + n]) for i in ids])
        m = len(ids)
        q_ = rearrange(x.q.index_select(1, pos), "b (m l) h c -> (b m) h l c", m=m)
        k_, v_ = (rearrange(a.index_select(1, kv), "b (m l) h c -> (b m) h l c", m=m) for a in (k, v))
        out = F.scaled_dot_product_attention(q_, k_, v_)                             # (b m, h, l, c)
        acc.index_add_(1, pos, rearrange(out, "(b m) h l c -> b (m l) h c", m=m))
    return rearrange(acc, "b t h c -> b t (h c)") / b_.count[None, :, None]


def padded(b_: Boxes) -> Tensor:
    """All boxes padded to the longest, padding masked out of the keys.  -> (b, t, h*c)"""
    x = b_.x
    b, t, h, c = x.q.shape
    n = x.lk.shape[1]
    k, v = _kv(x)
    longest = max(p.numel() for p in b_.pos)
    q_idx = torch.zeros(n, longest, dtype=torch.long)
    kv_idx = torch.zeros(n, longest + 1, dtype=torch.long)
    keep = torch.zeros(n, longest + 1, dtype=torch.bool)
    for i, pos in enumerate(b_.pos):
        q_idx[i, :pos.numel()] = pos
        kv_idx[i, 0], kv_idx[i, 1:pos.numel() + 1] = i, pos + n
        keep[i, :pos.numel() + 1] = True
    q_ = rearrange(x.q.index_select(1, q_idx.flatten()), "b (n l) h c -> (b n) h l c", n=n)
    k_, v_ = (rearrange(a.index_select(1, kv_idx.flatten()), "b (n l) h c -> (b n) h l c", n=n) for a in (k, v))
    out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=keep.repeat(b, 1)[:, None, None, :])
    out = rearrange(out, "(b n) h l c -> b n l h c", n=n)
    acc = x.q.new_zeros(b, t, h, c)
    for i, pos in enumerate(b_.pos):
        acc.index_add_(1, pos, out[:, i, :pos.numel()])
    return rearrange(acc, "b t h c -> b t (h c)") / b_.count[None, :, None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, boxes=(50,))
    parser.add_argument("--fused", action="store_true", help="run `packed` on the fused path (flex_attention; "
                                                              "eager and dense on CPU: slow there)")
    args = parser.parse_args(argv)
    dims, device, dtype = setup(args)
    adapter = make_adapter(dims, device, dtype, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    for n in args.boxes:
        side = (dims.side_min + dims.side_max) // 2
        rng = random.Random(args.seed)
        equal = [(c0 / dims.grid, r0 / dims.grid, (c0 + side) / dims.grid, (r0 + side) / dims.grid)
                 for c0, r0 in ((rng.randint(0, dims.grid - side), rng.randint(0, dims.grid - side))
                                for _ in range(n))]
        for name, boxes in (("seeded", seeded_boxes(n, dims, args.seed + n)), (f"equal {side}x{side}", equal)):
            idx = make_call(adapter, make_state(adapter, boxes, dims, args.seed), dims, device).assemble.index
            t, h, c = idx.asm_cov.numel(), dims.heads, dims.head_dim
            rand = lambda length: torch.randn(1, length, h, c, generator=g).to(device, dtype)   # noqa: E731
            x = Boxes(AssembleInputs(q=rand(t), k=rand(t), v=rand(t), lk=rand(n), lv=rand(n), pos=idx.asm_pos,
                                     packing=idx.asm_packing), idx.asm_count.to(dtype))
            fns = {"packed": packed, "per_box": per_box, "bucketed": bucketed, "padded": padded}
            with torch.inference_mode(), hotpath.force("fused" if args.fused else None):
                want = per_box(x)
                for fn in fns.values():
                    err = ((fn(x) - want).abs().max() / want.abs().max()).item()
                    if err > (1e-4 if dtype == torch.float32 else 5e-2):
                        raise RuntimeError(f"{fn.__name__} disagrees with the per-box loop ({err:.2e})")
                lengths = [int(p.numel()) for p in idx.asm_pos]
                log.info("%d boxes, %s: %d distinct lengths, longest %d, mean %.0f tokens", n, name,
                         len(set(lengths)), max(lengths), sum(lengths) / n)
                times = time_interleaved({k: (lambda fn=fn: fn(x)) for k, fn in fns.items()}, repeats=args.repeats,
                                         warmup=args.warmup, device=device)
            log.info("median times: %s", times.medians())
            report(f"packed/per_box boxes={n} {name}", times, "packed", "per_box", "CUDA's layout / CPU's loop")
            report(f"bucketed/per_box boxes={n} {name}", times, "bucketed", "per_box")
            report(f"padded+mask/per_box boxes={n} {name}", times, "padded", "per_box")


if __name__ == "__main__":
    main()
