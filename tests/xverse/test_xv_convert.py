"""`refcomp convert xverse` and `load_xverse`: strict loading of the released files (WEIGHTS_COMPAT §2.2)."""
from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

import xv_oracle
from helpers import TINY_FLUX
from xv_files import SINGLE_OFF, TINY_CONFIG, adapter_tensors, lora_file_keys, lora_modules, lora_tensors, \
    write_adapter, write_lora
from refcomp_core.errors import CheckpointError
from refcomp_core.released.instanceassemble import TargetSpec
from refcomp_core.released.xverse import convert, load_xverse, read_xverse_info
from refcomp_core.xverse import offsets

SPEC = TargetSpec.from_diffusers_config(TINY_FLUX)
IN_CHANNELS = TINY_FLUX["in_channels"]
NUM_SINGLE = TINY_FLUX["num_single_layers"]


def _files(tmp_path, *, fmt="safetensors", config=TINY_CONFIG, tensors=None, lora=None, **lora_kw):
    adapter_dir, lora_path = tmp_path / "XVerse" / "modulation_adapter", tmp_path / "XVerse" / "lora.safetensors"
    released = write_adapter(adapter_dir, config=config, tensors=tensors, fmt=fmt)
    modules = lora_tensors() if lora is None else lora
    write_lora(lora_path, modules, **lora_kw)
    return adapter_dir, lora_path, released, modules


def _convert(tmp_path, name="out.safetensors", **kw):
    adapter_dir, lora_path, released, modules = _files(tmp_path, **kw)
    info = convert(adapter_dir=adapter_dir, lora=lora_path, out=tmp_path / name, spec=SPEC, in_channels=IN_CHANNELS)
    return info, tmp_path / name, released, modules


def test_converted_file_holds_the_released_tensors(tmp_path) -> None:
    info, out, released, modules = _convert(tmp_path)
    raw = load_file(str(out))
    for key, value in released.items():
        assert torch.equal(raw["xverse." + key], value), key
    kept = {m: v for m, v in modules.items() if not m.endswith(SINGLE_OFF)}
    assert len(kept) == 1 + 12 * 2 + 4 * NUM_SINGLE and len(modules) - len(kept) == 2 * NUM_SINGLE
    for m, (a, b, _) in kept.items():
        assert torch.equal(raw[f"xverse.lora.{m}.down"], a) and torch.equal(raw[f"xverse.lora.{m}.up"], b), m
    assert not any(m.endswith(SINGLE_OFF) for m in info.config.lora)
    assert len(raw) == len(released) + 2 * len(kept)
    cfg = read_xverse_info(out).config
    assert cfg == info.config and cfg.released_config() == {k: v for k, v in TINY_CONFIG.items() if k[0] != "_"}
    assert cfg.num_double_blocks == 2 and cfg.in_channels == IN_CHANNELS
    assert set(cfg.lora.values()) == {(4, 1.0)}
    src = read_xverse_info(out).source
    assert src["method"] == "XVerse" and src["adapter_weights"] == "diffusion_pytorch_model.safetensors"
    assert len(src["adapter_weights_sha256"]) == 64 and src["lora_modules"] == len(kept)
    assert src["lora_dropped"] == 2 * NUM_SINGLE
    assert (out.stat().st_mode & 0o777) == 0o644 and not (tmp_path / "out.safetensors.tmp").exists()


def test_loaded_adapter_computes_the_released_offsets(tmp_path) -> None:
    _, out, released, modules = _convert(tmp_path)
    adapter, info = load_xverse(out, dtype=torch.float32)
    assert not adapter.training and not any(p.requires_grad for p in adapter.parameters())
    pair = adapter.lora_pair("transformer_blocks.1.attn.to_out.0")
    a, b, _ = modules["transformer_blocks.1.attn.to_out.0"]
    x = torch.randn(3, a.shape[1])
    assert torch.allclose(pair.delta(x, 0.85), 0.85 * (x @ a.T @ b.T), atol=1e-6) and pair.alpha_over_rank == 1.0
    assert adapter.lora_pair("single_transformer_blocks.0.proj_mlp") is None
    txt, img = torch.randn(1, 6, TINY_CONFIG["input_text_dim"]), torch.randn(1, 5, TINY_CONFIG["input_image_dim"])
    with torch.no_grad():
        shared, per_block = offsets(adapter, txt, img)
    want_shared, want_block = xv_oracle.offsets(released, TINY_CONFIG, 2, txt, img)
    assert (shared.double() - want_shared).abs().max() <= 1e-5 and (per_block.double() - want_block).abs().max() <= 1e-5
    half, _ = load_xverse(out, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_bin_and_sharded_adapters_convert_to_the_same_file(tmp_path, fmt) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, ref, _, _ = _convert(tmp_path / "a")
    info, got, _, _ = _convert(tmp_path / "b", fmt=fmt)
    a, b = load_file(str(ref)), load_file(str(got))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert info.source["adapter_weights"].startswith("diffusion_pytorch_model") and \
        info.source["adapter_weights"].endswith(".bin" if fmt == "bin" else ".index.json")


@pytest.mark.parametrize("form", [dict(prefix=""), dict(prefix="transformer.", adapter_name="default"),
                                  dict(prefix="", adapter_name="default")])
def test_lora_with_or_without_the_transformer_prefix(tmp_path, form) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, ref, _, _ = _convert(tmp_path / "a")
    _, got, _, _ = _convert(tmp_path / "b", **form)
    a, b = load_file(str(ref)), load_file(str(got))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rank,alpha,scale", [(4, 8.0, 2.0), (2, 2.0, 1.0), (1, None, 1.0), (8, 4.0, 0.5)])
def test_rank_and_alpha_come_from_the_file(tmp_path, rank, alpha, scale) -> None:
    info, out, _, _ = _convert(tmp_path, lora=lora_tensors(rank=rank, alpha=alpha))
    assert set(info.config.lora.values()) == {(rank, scale)}
    adapter, _ = load_xverse(out)
    assert adapter.lora_pair("x_embedder").alpha_over_rank == scale
    assert adapter.lora_pair("x_embedder").down.shape == (rank, IN_CHANNELS)


def test_adapter_folder_or_its_parent(tmp_path) -> None:
    adapter_dir, lora_path, _, _ = _files(tmp_path)
    info = convert(adapter_dir=adapter_dir.parent, lora=lora_path, out=tmp_path / "o.safetensors", spec=SPEC,
                   in_channels=IN_CHANNELS)
    assert info.config.width == TINY_CONFIG["width"]


def _adapter_error(tmp_path, *, mutate=None, config=None, fmt="safetensors") -> str:
    tensors = adapter_tensors()
    if mutate:
        mutate(tensors)
    adapter_dir, lora_path, _, _ = _files(tmp_path, config=config or TINY_CONFIG, tensors=tensors, fmt=fmt)
    with pytest.raises(CheckpointError) as err:
        convert(adapter_dir=adapter_dir, lora=lora_path, out=tmp_path / "o.safetensors", spec=SPEC,
                in_channels=IN_CHANNELS)
    assert not (tmp_path / "o.safetensors").exists()
    return str(err.value)


def test_adapter_weight_errors_name_the_key(tmp_path) -> None:
    msg = _adapter_error(tmp_path, mutate=lambda t: t.pop("net2.perceiver_blocks.0.ln_ff.linear.bias"))
    assert "missing keys net2.perceiver_blocks.0.ln_ff.linear.bias" in msg
    msg = _adapter_error(tmp_path, mutate=lambda t: t.__setitem__("net.perceiver_blocks.2.attn.in_proj_bias",
                                                                   torch.zeros(48)))
    assert "unexpected keys net.perceiver_blocks.2.attn.in_proj_bias" in msg
    msg = _adapter_error(tmp_path, mutate=lambda t: t.__setitem__("net2.proj_out.0.weight", torch.zeros(32, 24)))
    assert "net2.proj_out.0.weight has shape (32, 24), expected (64, 24)" in msg
    msg = _adapter_error(tmp_path, mutate=lambda t: t.__setitem__("net.text_proj_in.bias",
                                                                   torch.zeros(16, dtype=torch.int32)))
    assert "net.text_proj_in.bias has dtype torch.int32" in msg
    (tmp_path / "bin").mkdir()
    msg = _adapter_error(tmp_path / "bin", fmt="bin", mutate=lambda t: t.pop("net.image_proj_in.weight"))
    assert "missing keys net.image_proj_in.weight" in msg


def test_a_config_that_does_not_match_the_weights(tmp_path) -> None:
    msg = _adapter_error(tmp_path, config={**TINY_CONFIG, "width": 8})
    assert "the weights do not match config.json" in msg and '"width": 8' in msg
    assert "net.image_proj_in.bias has shape (16,), expected (8,)" in msg
    msg = _adapter_error(tmp_path, config={**TINY_CONFIG, "pblock_layers": 2})
    assert "missing keys net2.perceiver_blocks.1." in msg
    msg = _adapter_error(tmp_path, config={**TINY_CONFIG, "pblock_single_blocks": 1})
    assert "net2.proj_out.0.weight has shape (64, 24), expected (96, 24)" in msg


@pytest.mark.parametrize("change,expected", [
    (lambda c: c.pop("heads"), "missing keys ['heads']"),
    (lambda c: c.__setitem__("dropout", 0.1), "unknown keys ['dropout']"),
    (lambda c: c.__setitem__("_class_name", "UNet2DModel"), "_class_name is 'UNet2DModel'"),
    (lambda c: c.__setitem__("layers", 2.5), "layers=2.5: every adapter size must be an integer"),
    (lambda c: c.__setitem__("out_dim", 16), "out_dim is 16, but the FLUX transformer has hidden size 32"),
])
def test_config_json_errors(tmp_path, change, expected) -> None:
    config = dict(TINY_CONFIG)
    change(config)
    assert expected in _adapter_error(tmp_path, config=config)


def test_missing_and_damaged_adapter_files(tmp_path) -> None:
    adapter_dir, lora_path, _, _ = _files(tmp_path)

    def fails(match: str, folder=adapter_dir) -> None:
        with pytest.raises(CheckpointError, match=match):
            convert(adapter_dir=folder, lora=lora_path, out=tmp_path / "o.safetensors", spec=SPEC,
                    in_channels=IN_CHANNELS)
        assert not (tmp_path / "o.safetensors").exists()

    fails("is not a folder", tmp_path / "nowhere")
    fails("no config.json", tmp_path)
    weights = adapter_dir / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    fails("damaged safetensors")
    weights.unlink()
    fails("no weights; expected one of")
    (adapter_dir / "config.json").write_text("{not json")
    fails("not a readable config.json")


def test_bin_pickles_that_hold_more_than_tensors_or_are_truncated(tmp_path) -> None:
    adapter_dir, lora_path, _, _ = _files(tmp_path, fmt="bin")
    binary = adapter_dir / "diffusion_pytorch_model.bin"

    def fails(match: str) -> None:
        with pytest.raises(CheckpointError, match=match):
            convert(adapter_dir=adapter_dir, lora=lora_path, out=tmp_path / "o.safetensors", spec=SPEC,
                    in_channels=IN_CHANNELS)

    torch.save({"state_dict": adapter_tensors()}, binary)
    fails("expected a state dict of tensors, found 'state_dict': OrderedDict")
    torch.save([torch.zeros(1)], binary)
    fails("expected a state dict of tensors, found list")
    with open(binary, "wb") as f:                                              # arbitrary code: refused unread
        pickle.dump(OrderedDict(x=torch.zeros(1), y=print), f, protocol=2)
    fails("weights-only")
    torch.save(adapter_tensors(), binary)
    data = binary.read_bytes()
    binary.write_bytes(data[: len(data) // 2])
    fails("truncated, damaged")


def _lora_error(tmp_path, tensors: dict) -> str:
    adapter_dir, lora_path, _, _ = _files(tmp_path)
    save_file(tensors, str(lora_path))
    with pytest.raises(CheckpointError) as err:
        convert(adapter_dir=adapter_dir, lora=lora_path, out=tmp_path / "o.safetensors", spec=SPEC,
                in_channels=IN_CHANNELS)
    return str(err.value)


def test_lora_errors_name_the_module(tmp_path) -> None:
    good = lora_file_keys(lora_tensors())
    no_module = {k: v for k, v in good.items() if ".transformer_blocks.1.ff_context.net.2." not in k}
    assert "missing modules transformer_blocks.1.ff_context.net.2" in _lora_error(tmp_path, no_module)
    extra = dict(good, **{"transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight": torch.zeros(4, 32),
                          "transformer.transformer_blocks.0.ff.net.0.proj.lora_B.weight": torch.zeros(128, 4)})
    assert "modules XVerse's LoRA does not have transformer_blocks.0.ff.net.0.proj" in _lora_error(tmp_path, extra)
    no_b = {k: v for k, v in good.items() if k != "transformer.x_embedder.lora_B.weight"}
    assert "module x_embedder has no lora_B" in _lora_error(tmp_path, no_b)
    wrong = dict(good, **{"transformer.single_transformer_blocks.1.proj_out.lora_A.weight": torch.zeros(4, 32)})
    msg = _lora_error(tmp_path, wrong)
    assert "single_transformer_blocks.1.proj_out has lora_A (4, 32)" in msg and "(rank, 160)" in msg
    foreign = dict(good, **{"text_encoder.layers.0.lora_A.weight": torch.zeros(4, 8)})
    assert "text_encoder.layers.0.lora_A.weight" in _lora_error(tmp_path, foreign)
    half_alpha = dict(good, **{"transformer.x_embedder.alpha": torch.tensor(4.0)})
    assert "some LoRA modules carry an alpha and others do not" in _lora_error(tmp_path, half_alpha)


def test_lora_must_be_safetensors(tmp_path) -> None:
    adapter_dir, lora_path, _, _ = _files(tmp_path)
    torch.save(lora_file_keys(lora_tensors()), lora_path)
    with pytest.raises(CheckpointError, match="not a safetensors file; XVerse releases"):
        convert(adapter_dir=adapter_dir, lora=lora_path, out=tmp_path / "o.safetensors", spec=SPEC,
                in_channels=IN_CHANNELS)
    with pytest.raises(CheckpointError, match="XVerse LoRA file not found"):
        convert(adapter_dir=adapter_dir, lora=tmp_path / "none.safetensors", out=tmp_path / "o.safetensors",
                spec=SPEC, in_channels=IN_CHANNELS)


def test_the_lora_for_another_model_is_refused(tmp_path) -> None:
    big = dict(TINY_FLUX, num_layers=3)
    msg = _lora_error(tmp_path, lora_file_keys(lora_tensors(big)))
    assert "transformer.transformer_blocks.2." in msg            # blocks the tiny model does not have
    narrow = dict(TINY_FLUX, attention_head_dim=8)                 # hidden 16 instead of 32
    msg = _lora_error(tmp_path, lora_file_keys(lora_tensors(narrow)))
    assert "single_transformer_blocks.0.attn.to_k has lora_A (4, 16) / lora_B (16, 4)" in msg
    assert "a model of hidden size 32 needs (rank, 32) / (32, rank)" in msg


def _rewrite(path, tensors=None, meta=None):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        old_meta = f.metadata()
    save_file(load_file(str(path)) if tensors is None else tensors, str(path),
              metadata=old_meta if meta is None else meta)


def test_load_errors_name_the_key(tmp_path) -> None:
    _, out, _, _ = _convert(tmp_path)
    tensors = load_file(str(out))
    del tensors["xverse.net.proj_out.1.bias"]
    _rewrite(out, tensors)
    with pytest.raises(CheckpointError, match="missing keys xverse.net.proj_out.1.bias"):
        load_xverse(out)
    tensors["xverse.net.proj_out.1.bias"] = torch.zeros(5)
    _rewrite(out, tensors)
    with pytest.raises(CheckpointError, match=r"xverse.net.proj_out.1.bias has shape \(5,\), expected \(32,\)"):
        load_xverse(out)
    tensors["xverse.net.proj_out.1.bias"] = torch.zeros(32)
    tensors["xverse.lora.single_transformer_blocks.0.norm.linear.down"] = torch.zeros(4, 32)
    _rewrite(out, tensors)
    with pytest.raises(CheckpointError, match="unexpected keys xverse.lora.single_transformer_blocks.0.norm.linear"):
        load_xverse(out)
    tensors["layout.other"] = torch.zeros(1)
    _rewrite(out, tensors)
    with pytest.raises(CheckpointError, match="tensors outside the xverse namespace: layout.other"):
        load_xverse(out)


def test_load_refuses_what_is_not_a_converted_xverse_file(tmp_path) -> None:
    adapter_dir, lora_path, _, _ = _files(tmp_path, fmt="bin")
    hint = "refcomp convert xverse --adapter"
    for raw in (adapter_dir / "diffusion_pytorch_model.bin", lora_path):
        with pytest.raises(CheckpointError, match=hint):
            load_xverse(raw)
    _, out, _, _ = _convert(tmp_path / "c" if (tmp_path / "c").mkdir() is None else None)
    _rewrite(out, meta={"format": "refcomp", "refcomp_config": "{}"})
    with pytest.raises(CheckpointError, match="a RefComp checkpoint of kind 'adapter', not converted XVerse weights"):
        load_xverse(out)
    _rewrite(out, meta={"format": "refcomp", "kind": "xverse", "xverse_config": "{oops"})
    with pytest.raises(CheckpointError, match="xverse_config metadata is not valid JSON"):
        load_xverse(out)
    _rewrite(out, meta={"format": "refcomp", "kind": "xverse", "xverse_config": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match="xverse_config metadata is not valid JSON"):       # too deep
        load_xverse(out)
    with pytest.raises(CheckpointError, match="converted XVerse file not found"):
        load_xverse(tmp_path / "missing.safetensors")


def test_truncated_converted_file(tmp_path) -> None:
    _, out, _, _ = _convert(tmp_path)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_xverse(out)


def test_cli_convert_xverse(tmp_path, caplog) -> None:
    from refcomp import cli

    adapter_dir, lora_path, released, _ = _files(tmp_path)
    flux_config = tmp_path / "transformer_config.json"
    flux_config.write_text(json.dumps({"_class_name": "FluxTransformer2DModel", **TINY_FLUX}))
    out = tmp_path / "xverse.safetensors"
    args = ["convert", "xverse", "--adapter", str(adapter_dir), "--lora", str(lora_path), "--transformer-config",
            str(flux_config)]
    assert cli.main(args + ["--out", str(out)]) == 0
    assert "wrote" in caplog.text and "XVerse adapter (width 16 / 24" in caplog.text
    adapter, _ = load_xverse(out)
    assert torch.equal(adapter.net.text_proj_in.weight, released["net.text_proj_in.weight"])
    assert cli.main(args + ["--out", str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in caplog.text
    assert cli.main(["convert", "xverse", "--adapter", str(adapter_dir), "--lora", str(lora_path), "--out",
                     str(tmp_path / "full.safetensors")]) == 2              # FLUX.1 default: the tiny files do not fit
    assert "out_dim is 32, but the FLUX transformer has hidden size 3072" in caplog.text
