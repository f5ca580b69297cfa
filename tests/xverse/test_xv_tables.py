"""The released files at full size, on the meta device (WEIGHTS_COMPAT §2.2, appendix): keys, shapes and
parameter counts from the real config.json values, and the LoRA module table against a real diffusers
FLUX.1 transformer's Linear layers."""
from __future__ import annotations

import math

import pytest
import torch

from xv_files import FLUX1, REAL_CONFIG, SINGLE_OFF, adapter_shapes, lora_modules
from refcomp_core.released.instanceassemble import FLUX1 as FLUX1_SPEC
from refcomp_core.released.xverse import adapter_table
from refcomp_core.xverse import XVerseAdapter, XVerseConfig


def _config(**kw) -> XVerseConfig:
    return XVerseConfig.from_released(REAL_CONFIG, num_double_blocks=19, num_single_blocks=38, in_channels=64,
                                      mlp_hidden=FLUX1_SPEC.mlp_hidden, **kw)


def test_adapter_keys_shapes_and_counts_at_full_size() -> None:
    config = _config()
    table = adapter_table(config)
    assert table == adapter_shapes(REAL_CONFIG, 19)
    count = {ns: sum(math.prod(s) for k, s in table.items() if k.split(".")[0] == ns) for ns in ("net", "net2")}
    assert count == {"net": 368_596_992, "net2": 538_632_192}
    assert sum(count.values()) == 907_229_184
    assert table["net2.proj_out.0.weight"] == (58_368, 3072) and table["net.perceiver_blocks.2.attn.in_proj_weight"] \
        == (9216, 3072)
    block = sum(math.prod(s) for k, s in table.items() if k.startswith("net.perceiver_blocks.0."))
    assert block == 114_471_936


@pytest.mark.parametrize("rank", [4, 128])
def test_lora_table_and_counts_at_full_size(rank) -> None:
    released = _config().released_lora_modules()
    assert released == lora_modules(FLUX1)
    assert sum(i + o for i, o in released.values()) == 4_789_312
    assert sum((i + o) * rank for i, o in released.values()) == 4_789_312 * rank
    if rank == 128:
        assert sum((i + o) * rank for i, o in released.values()) == 613_031_936
    live = {m: (rank, 1.0) for m in _config().lora_sites()}
    assert set(released) - set(live) == {f"single_transformer_blocks.{s}.{m}" for s in range(38) for m in SINGLE_OFF}
    with torch.device("meta"):
        adapter = XVerseAdapter(_config(lora=live))
    counts = adapter.parameter_counts()
    assert counts["net"] + counts["net2"] == 907_229_184
    assert counts["lora"] == (4_789_312 - 38 * (12_288 + 15_360)) * rank
    assert adapter.lora_pair("single_transformer_blocks.37.proj_out").down.shape == (rank, 15_360)
    assert adapter.lora_pair("transformer_blocks.18.norm1_context.linear").up.shape == (18_432, rank)


def test_lora_modules_are_linears_of_the_real_flux1_transformer() -> None:
    """Each site's (in, out) is that of the diffusers FLUX.1 module of the same path."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX1)
    for path, (fan_in, fan_out) in _config().released_lora_modules().items():
        module = model.get_submodule(path)
        assert isinstance(module, torch.nn.Linear), path
        assert (module.in_features, module.out_features) == (fan_in, fan_out), path
