"""`refcomp convert instanceassemble`: strict loading of the released files (WEIGHTS_COMPAT §1.2, §1.3)."""
from __future__ import annotations

import json
import logging
import math
import pickle
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from ia_files import IA_TINY_FLUX, layout_tensors, lora_tensors, shared_down, write_layout_pth, write_lora
from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import load_adapter, read_info
from refcomp_core.errors import CheckpointError
from refcomp_core.released.instanceassemble import FLUX1, TargetSpec, build_config, convert, layout_table, \
    lora_site_dims

SPEC = TargetSpec.from_diffusers_config(IA_TINY_FLUX)


def _convert(tmp_path, *, layout=None, lora=None, form="peft", metadata=None):
    lp, rp, out = tmp_path / "layout.pth", tmp_path / "lora.safetensors", tmp_path / "out.safetensors"
    if layout is None:
        write_layout_pth(lp, IA_TINY_FLUX)
    else:
        torch.save(layout, lp)
    write_lora(rp, lora if lora is not None else lora_tensors(IA_TINY_FLUX), form, metadata)
    return convert(layout=lp, lora=rp, out=out, spec=SPEC), out


def test_converted_file_holds_the_released_tensors(tmp_path) -> None:
    weights = layout_tensors(IA_TINY_FLUX)
    lora = lora_tensors(IA_TINY_FLUX, rank=4)
    adapter, out = _convert(tmp_path, layout=weights, lora=lora)
    loaded, info = load_adapter(out)
    sd = loaded.state_dict()
    assert torch.equal(sd["encoder.linears.linear_1.weight"], weights["layout_net.linears.linear_1.weight"].float())
    assert torch.equal(sd["assemble_gate.3.linear.bias"], weights["transformer_blocks.3.layout_forward.bias"].float())
    assert torch.equal(sd["assemble_gate.s0.linear.weight"],
                       weights["single_transformer_blocks.0.layout_forward.weight"].float())
    a, b, _ = lora["transformer_blocks.3.attn.add_v_proj"]
    assert torch.equal(sd["lora.3.deltas.txt_v.down.weight"], a) and torch.equal(sd["lora.3.deltas.txt_v.up.weight"], b)
    cfg = info.config
    assert cfg.layout_pathway == "instanceassemble" and cfg.identity is False
    assert cfg.instanceassemble.double_blocks == (0, 3) and cfg.instanceassemble.single_blocks == (0,)
    assert len(cfg.instanceassemble.lora) == 2 * 12 + 6 and all(r == 4 for r, _ in cfg.instanceassemble.lora.values())
    assert info.source["method"] == "InstanceAssemble" and len(info.source["layout_sha256"]) == 64
    assert info.source["lora_modules"] == 30 and info.source["lora_dropped"] == 0
    assert not any(k.startswith(("alpha.", "modulation.", "bridge.", "single_gate.", "layout_head.")) for k in sd)


@pytest.mark.parametrize("form", ["peft", "peft_bare", "kohya", "kohya_bfl"])
@pytest.mark.parametrize("rank", [1, 4])
def test_every_key_form_gives_the_same_adapter(tmp_path, form, rank) -> None:
    lora = shared_down(lora_tensors(IA_TINY_FLUX, rank=rank))       # BFL-fused files share a down projection
    ref, _ = _convert(tmp_path / "ref" if (tmp_path / "ref").mkdir() is None else None, lora=lora)
    got, _ = _convert(tmp_path, lora=lora, form=form)
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert ref.config == got.config


@pytest.mark.parametrize("alpha,rank,mult", [(2.0, 4, 0.5), (1.0, 1, 1.0), (8.0, 4, 2.0)])
def test_alphas_set_the_multiplier(tmp_path, alpha, rank, mult) -> None:
    adapter, _ = _convert(tmp_path, lora=lora_tensors(IA_TINY_FLUX, rank=rank, alpha=alpha), form="kohya")
    assert {m for _, m in adapter.config.instanceassemble.lora.values()} == {mult}
    assert adapter.lora["0"].deltas["img_q"].scale == mult


def test_dead_modules_are_dropped_and_counted(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    adapter, out = _convert(tmp_path, lora=lora_tensors(IA_TINY_FLUX, dead=True))
    info = read_info(out)
    assert info.source["lora_modules"] == 30 and info.source["lora_dropped"] == 4
    assert "4 never-switched-on LoRA modules dropped" in caplog.text


def test_metadata_disagreement_is_logged(tmp_path, caplog) -> None:
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8})}
    _convert(tmp_path, metadata=meta)
    assert "diffusers 0.33.1" in caplog.text and "would scale by 2" in caplog.text


def _layout_error(tmp_path, mutate) -> str:
    weights = layout_tensors(IA_TINY_FLUX)
    mutate(weights)
    with pytest.raises(CheckpointError) as err:
        _convert(tmp_path, layout=weights)
    return str(err.value)


def test_layout_missing_extra_shape_dtype_errors_name_the_key(tmp_path) -> None:
    msg = _layout_error(tmp_path, lambda w: w.pop("transformer_blocks.3.layout_forward.bias"))
    assert "missing keys ['transformer_blocks.3.layout_forward.bias']" in msg
    msg = _layout_error(tmp_path, lambda w: w.__setitem__("transformer_blocks.1.layout_forward.weight",
                                                          torch.zeros(32, 32)))
    assert "unexpected keys ['transformer_blocks.1.layout_forward.weight']" in msg
    msg = _layout_error(tmp_path, lambda w: w.__setitem__("layout_net.linears.linear_1.weight", torch.zeros(16, 100)))
    assert "layout_net.linears.linear_1.weight has shape (16, 100), expected (16, 1184)" in msg
    msg = _layout_error(tmp_path, lambda w: w.__setitem__("layout_net.linears.linear_2.bias",
                                                          torch.zeros(32, dtype=torch.int64)))
    assert "layout_net.linears.linear_2.bias has dtype torch.int64" in msg


def test_prefixed_layout_keys_are_accepted(tmp_path) -> None:
    weights = OrderedDict(("module." + k, v) for k, v in layout_tensors(IA_TINY_FLUX).items())
    adapter, _ = _convert(tmp_path, layout=weights)
    assert adapter.config.layout_pathway == "instanceassemble"


def test_pickles_that_hold_more_than_tensors_or_are_truncated(tmp_path) -> None:
    lp, rp = tmp_path / "layout.pth", tmp_path / "lora.safetensors"
    write_lora(rp, lora_tensors(IA_TINY_FLUX))

    def fails(match: str) -> None:
        with pytest.raises(CheckpointError, match=match):
            convert(layout=lp, lora=rp, out=tmp_path / "o.safetensors", spec=SPEC)
        assert not (tmp_path / "o.safetensors").exists()

    torch.save({"state": layout_tensors(IA_TINY_FLUX)}, lp)                    # nested: not a flat dict
    fails("expected a dict of tensors.*'state': OrderedDict")
    torch.save([1, 2, 3], lp)
    fails("expected a dict of tensors.*found list")
    with open(lp, "wb") as f:                                                  # arbitrary code: refused unread
        pickle.dump(OrderedDict(x=torch.zeros(1), y=print), f)
    fails("weights-only")
    write_layout_pth(lp, IA_TINY_FLUX)
    data = lp.read_bytes()
    lp.write_bytes(data[: len(data) // 2])
    fails("truncated, damaged")
    lp.write_bytes(b"")
    fails("truncated, damaged")


def _lora_error(tmp_path, tensors: dict) -> str:
    lp, rp = tmp_path / "layout.pth", tmp_path / "lora.safetensors"
    write_layout_pth(lp, IA_TINY_FLUX)
    save_file(tensors, str(rp))
    with pytest.raises(CheckpointError) as err:
        convert(layout=lp, lora=rp, out=tmp_path / "o.safetensors", spec=SPEC)
    return str(err.value)


def test_lora_errors_name_the_module(tmp_path) -> None:
    from ia_files import to_file_keys
    good = to_file_keys(lora_tensors(IA_TINY_FLUX), "peft")
    bad = dict(good, **{"transformer.something.else.weight": torch.zeros(2)})
    assert "transformer.something.else.weight" in _lora_error(tmp_path, bad)
    no_b = {k: v for k, v in good.items() if k != "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"}
    assert "transformer_blocks.0.attn.to_q has no lora_B" in _lora_error(tmp_path, no_b)
    wrong = dict(good, **{"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 7)})
    assert "transformer_blocks.0.attn.to_q has lora_A (4, 7)" in _lora_error(tmp_path, wrong)
    mixed = dict(good, **{"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
                          "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2)})
    assert "ranks differ between modules ([2, 4]) and the file has no alphas" in _lora_error(tmp_path, mixed)
    half_alpha = dict(good, **{"transformer.transformer_blocks.0.attn.to_q.alpha": torch.tensor(4.0)})
    assert "some LoRA modules carry an alpha and others do not" in _lora_error(tmp_path, half_alpha)
    dead_only = to_file_keys({m: v for m, v in lora_tensors(IA_TINY_FLUX, dead=True).items()
                              if m.endswith("ff.net.0.proj")}, "peft")
    assert "none of its 2 LoRA modules is one InstanceAssemble switches on" in _lora_error(tmp_path, dead_only)


def test_full_size_tables_on_the_meta_device() -> None:
    """FLUX.1: layout.pth holds 98,535,936 parameters; the switched-on LoRA 924,672 per rank (§1.2, §1.3)."""
    assert sum(math.prod(s) for s in layout_table(FLUX1).values()) == 98_535_936
    assert sum(i + o for i, o in lora_site_dims(FLUX1).values()) == 924_672
    rank = 4
    lora = {m: (torch.empty(rank, i, device="meta"), None, 1.0) for m, (i, o) in lora_site_dims(FLUX1).items()}
    from refcomp_core.released.instanceassemble import _site
    config = build_config(FLUX1, {_site(m): v for m, v in lora.items()})
    with torch.device("meta"):
        adapter = RefCompAdapter(config)
    counts = adapter.parameter_counts()
    assert counts["encoder"] + counts["assemble_gate"] == 98_535_936
    assert counts["lora"] == 924_672 * rank
    assert sum(counts.values()) == 98_535_936 + 924_672 * rank


def test_loaders_refuse_the_pickle_and_name_the_conversion(tmp_path) -> None:
    write_layout_pth(tmp_path / "layout.pth", IA_TINY_FLUX)
    for path in (tmp_path / "layout.pth", tmp_path / "renamed.safetensors"):
        if path.suffix == ".safetensors":
            path.write_bytes((tmp_path / "layout.pth").read_bytes())
        with pytest.raises(CheckpointError, match="refcomp convert instanceassemble --layout layout.pth"):
            load_adapter(path)


def test_a_tensor_given_twice_under_two_key_forms_is_refused(tmp_path) -> None:
    """Keys that name the same tensor after their prefix is stripped never overwrite each other silently."""
    from ia_files import to_file_keys
    mods = lora_tensors(IA_TINY_FLUX)
    good = to_file_keys(mods, "peft")
    a, b, _ = mods["transformer_blocks.0.attn.to_q"]
    q = {"transformer_blocks.0.attn.to_q": (a.clone(), b.clone(), None)}                # the same module again
    bare = to_file_keys(q, "peft_bare")
    assert "second lora_A / lora_down tensor for module transformer_blocks.0.attn.to_q" in \
        _lora_error(tmp_path, {**good, **bare})
    kohya = to_file_keys(q, "kohya")
    assert "module transformer_blocks.0.attn.to_q has LoRA tensors under two key forms" in \
        _lora_error(tmp_path, {**good, **kohya})
    weights = layout_tensors(IA_TINY_FLUX)
    key = next(iter(weights))
    msg = _layout_error(tmp_path, lambda w: w.__setitem__("module." + key, weights[key]))
    assert f"module.{key} repeats the tensor {key} under another prefix" in msg
