"""XVerse's T-Mod adapter (WEIGHTS_COMPAT §2.3) against the naive reference, in float32 <= 1e-5."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xv_oracle
from helpers import TINY_FLUX
from xv_files import TINY_CONFIG, adapter_shapes, adapter_tensors
from refcomp_core.xverse import XVerseAdapter, XVerseConfig, offsets
from refcomp_core.xverse.config import RELEASED_KEYS

NUM_DOUBLE = TINY_FLUX["num_layers"]


def _adapter(config: dict = TINY_CONFIG, seed: int = 0) -> tuple[XVerseAdapter, dict]:
    cfg = XVerseConfig.from_released(config, num_double_blocks=NUM_DOUBLE, num_single_blocks=2, in_channels=16)
    adapter = XVerseAdapter(cfg)
    released = adapter_tensors(config, NUM_DOUBLE, seed=seed)
    missing, unexpected = adapter.load_state_dict(released, strict=False)
    assert not unexpected and all(k.startswith("lora.") for k in missing)
    return adapter.eval(), released


def _inputs(config: dict, batch: int = 2, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    txt = torch.randn(batch, 7, config["input_text_dim"], generator=g)         # 7 caption tokens (128 released)
    img = torch.randn(batch, 5, config["input_image_dim"], generator=g)        # 5 image tokens (257 released)
    return txt, img


def test_module_keys_are_the_released_ones() -> None:
    adapter, _ = _adapter()
    got = {k: tuple(v.shape) for k, v in adapter.state_dict().items() if not k.startswith("lora.")}
    assert got == adapter_shapes(TINY_CONFIG, NUM_DOUBLE)


@pytest.mark.parametrize("config", [TINY_CONFIG, {**TINY_CONFIG, "pblock_single_blocks": 1, "layers": 1,
                                                   "pblock_layers": 3, "heads": 4, "width": 8}])
def test_offsets_match_the_naive_reference(config) -> None:
    adapter, released = _adapter(config)
    txt, img = _inputs(config)
    with torch.no_grad():
        shared, per_block = offsets(adapter, txt, img)
    k = NUM_DOUBLE + config["pblock_single_blocks"]
    assert shared.shape == (2, 7, config["out_dim"]) and per_block.shape == (2, 7, k, config["out_dim"])
    want_shared, want_block = xv_oracle.offsets(released, config, NUM_DOUBLE, txt, img)
    assert shared.dtype == torch.float32
    assert (shared.double() - want_shared).abs().max() <= 1e-5
    assert (per_block.double() - want_block).abs().max() <= 1e-5
    assert shared.abs().mean() > 0.1 and not torch.allclose(shared[0], shared[1])      # nothing degenerate


def test_each_reference_is_independent() -> None:
    """Batch rows (references) do not mix: one reference alone gives its row of the batch."""
    adapter, _ = _adapter()
    txt, img = _inputs(TINY_CONFIG)
    with torch.no_grad():
        both, both_block = offsets(adapter, txt, img)
        one, one_block = offsets(adapter, txt[1:], img[1:])
    assert torch.allclose(both[1:], one, atol=1e-6) and torch.allclose(both_block[1:], one_block, atol=1e-6)


def test_timestep_embedding_is_zero_so_only_the_adaln_bias_acts() -> None:
    adapter, released = _adapter()
    txt, img = _inputs(TINY_CONFIG)
    with torch.no_grad():
        before, _ = offsets(adapter, txt, img)
        for name, p in adapter.named_parameters():
            if name.endswith("linear.weight") and ".ln_" in name:
                p.add_(torch.randn_like(p))
        same, _ = offsets(adapter, txt, img)
        adapter.net.perceiver_blocks[0].ln_1.linear.bias.add_(0.5)
        moved, _ = offsets(adapter, txt, img)
    assert torch.equal(before, same)
    assert (moved - before).abs().max() > 1e-3


@pytest.mark.parametrize("heads,lq,lk", [(1, 3, 5), (2, 4, 9), (4, 6, 6)])
def test_multihead_attention_packed_weights_are_q_k_v_in_order(heads, lq, lk) -> None:
    """nn.MultiheadAttention(batch_first) with packed in_proj = [q; k; v] rows, heads = column blocks."""
    torch.manual_seed(heads)
    width = 8
    mha = nn.MultiheadAttention(width, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    q, kv = torch.randn(1, lq, width), torch.randn(1, lk, width)
    with torch.no_grad():
        got = mha(q, kv, kv, need_weights=False)[0][0]
    sd = {f"attn.{k}": v.double() for k, v in mha.state_dict().items()}
    want = xv_oracle.packed_attention(q[0].double(), kv[0].double(), sd, "attn", heads)
    assert (got.double() - want).abs().max() <= 1e-5
    sd_swapped = dict(sd)
    w = sd["attn.in_proj_weight"]
    sd_swapped["attn.in_proj_weight"] = torch.cat([w[width:2 * width], w[:width], w[2 * width:]])
    wrong = xv_oracle.packed_attention(q[0].double(), kv[0].double(), sd_swapped, "attn", heads)
    assert (got.double() - wrong).abs().max() > 1e-3


def test_offsets_refuse_wrong_inputs() -> None:
    adapter, _ = _adapter()
    txt, img = _inputs(TINY_CONFIG)
    with pytest.raises(ValueError, match=r"txt must be \(B, L, 24\) T5 states"):
        offsets(adapter, img, img)
    with pytest.raises(ValueError, match=r"img must be \(2, M, 12\) CLIP penultimate"):
        offsets(adapter, txt, img[:1])


def test_config_validation_and_json_round_trip() -> None:
    cfg = XVerseConfig.from_released(TINY_CONFIG, num_double_blocks=NUM_DOUBLE, num_single_blocks=2, in_channels=16,
                                     lora={"x_embedder": (4, 0.5), "transformer_blocks.1.attn.to_out.0": (2, 1.0)})
    again = XVerseConfig.from_json(cfg.to_json())
    assert again == cfg and again.lora["x_embedder"] == (4, 0.5) and again.mlp_hidden == 4 * 32
    assert cfg.released_config() == {k: TINY_CONFIG[k] for k in RELEASED_KEYS}
    with pytest.raises(ValueError, match="width .* must be divisible by heads"):
        XVerseConfig.from_released({**TINY_CONFIG, "heads": 3}, num_double_blocks=2, num_single_blocks=2)
    with pytest.raises(ValueError, match="'single_transformer_blocks.0.proj_mlp' is not a site"):
        XVerseConfig(**{k: TINY_CONFIG[k] for k in RELEASED_KEYS}, num_double_blocks=2, num_single_blocks=2,
                     lora={"single_transformer_blocks.0.proj_mlp": (4, 1.0)})
    with pytest.raises(ValueError, match="'transformer_blocks.2.attn.to_q' is not a site"):
        XVerseConfig(**{k: TINY_CONFIG[k] for k in RELEASED_KEYS}, num_double_blocks=2, num_single_blocks=2,
                     lora={"transformer_blocks.2.attn.to_q": (4, 1.0)})
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 65536\]"):
        XVerseConfig(**{k: TINY_CONFIG[k] for k in RELEASED_KEYS}, lora={"x_embedder": (0, 1.0)})
    with pytest.raises(ValueError, match=r"layers must be an int in \[1, 1024\], got True"):
        XVerseConfig(**{**{k: TINY_CONFIG[k] for k in RELEASED_KEYS}, "layers": True})
