"""A CPU proxy of GPU launch overhead that CI checks (issue 13, DESIGN §7): the number of ATen ops
one patched double block dispatches at 50 instances, against the vanilla diffusers block.

On an H200 the old design was launch-bound: 618 kernel launches per patched block call against 75
for the vanilla block (2.23x / 3.69x the vanilla block's time at 18 / 50 boxes). Counted here
with `bench/op_count.py` (a `TorchDispatchMode` counter; counts do not depend on the width):

| design                                            | vanilla | mod only | mod + assemble, 18 | 50  |
|---------------------------------------------------|---------|----------|--------------------|-----|
| before issue 13 (265cad4: per-box gathers + SDPA) | 114     | 163      | 509                | 925 |
| now, loop path (CPU: the same per-box loop)       | 114     | 163      | 504                | 920 |
| now, fused path (CUDA: one flex_attention call)   | 114     | 127      | 245                | 245 |

The fused path is what CUDA runs; here it runs on CPU (flex_attention counted as the one kernel
it compiles to). Its count must stay under the ceilings and must not grow with the instances;
the loop path, which still dispatches per box, must not fit them (so the test can fail).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

CEILING = 2.5            # fused mod + assemble, ATen ops / the vanilla block's
DATA_CEILING = 2.0       # the same counting only ops that move data
MOD_CEILING = 1.25       # fused modulation only (a step outside the layout window) / vanilla


@pytest.fixture(scope="module")
def counts():
    from common import block_bench
    from op_count import block_counts
    bench = block_bench("op count", ["--heads", "2", "--head-dim", "16", "--grid", "32", "--text", "16",
                                     "--lora-rank", "4", "--threads", "1"])
    return {n: block_counts(bench, n) for n in (18, 50)}


def test_fused_block_dispatches_few_ops_at_50_instances(counts) -> None:
    fused = counts[50]["fused"]
    vanilla, full, mod = fused["vanilla"], fused["full"], fused["mod"]
    assert 80 <= vanilla.total <= 200, f"the vanilla block dispatched {vanilla.total} ops; did diffusers change?"
    assert full.total <= CEILING * vanilla.total, (full.total, vanilla.total, full.ops.most_common(10))
    assert full.launches <= DATA_CEILING * vanilla.launches, (full.launches, vanilla.launches)
    assert mod.total <= MOD_CEILING * vanilla.total, (mod.total, vanilla.total, mod.ops.most_common(10))
    assert full.ops["flex_attention"] == 1 and "aten.scaled_dot_product_attention" in full.ops  # + the joint one
    assert full.ops["aten.scaled_dot_product_attention"] == 1


def test_fused_op_count_does_not_grow_with_instances(counts) -> None:
    for variant in ("mod", "full"):
        assert counts[18]["fused"][variant].total == counts[50]["fused"][variant].total, variant


def test_loop_path_would_fail_the_ceiling(counts) -> None:
    """The CPU loop path dispatches per box, as the launch-bound design did: it must not pass."""
    loop = counts[50]["loop"]
    assert loop["full"].total > CEILING * loop["vanilla"].total
    assert loop["full"].ops["aten.scaled_dot_product_attention"] == 51        # 50 boxes + the joint attention
    assert counts[50]["loop"]["full"].total > counts[18]["loop"]["full"].total
