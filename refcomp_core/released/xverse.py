"""XVerse's released FLUX.1 files -> one converted safetensors file, and its strict loader
(WEIGHTS_COMPAT §2.2).

    convert(adapter_dir="XVerse/modulation_adapter", lora="XVerse/pytorch_lora_weights.safetensors",
            out="xverse_flux1.safetensors")
    adapter, info = load_xverse("xverse_flux1.safetensors", device="cuda", dtype=torch.bfloat16)

- `modulation_adapter/`: `config.json` (the nine `CLIPModAdapter` sizes, read into `XVerseConfig`)
  and its weights: `diffusion_pytorch_model.safetensors` (or a sharded `.safetensors.index.json`), or
  `diffusion_pytorch_model.bin`, read only here with `torch.load(weights_only=True)`. The key set and
  every shape must be exactly those built from config.json (907,229,184 parameters released).
- the LoRA (`pytorch_lora_weights.safetensors`, with or without the `transformer.` prefix, any rank,
  any key form `lora_keys` reads) must hold exactly XVerse's module set (§2.2b). The single blocks'
  `norm.linear` and `proj_mlp` LoRA, never active in XVerse (§2.6), are counted and dropped.
- the output: tensors `xverse.net.*`, `xverse.net2.*`, `xverse.lora.<module>.down` (r, in) / `.up`
  (out, r), in the source dtype; metadata `format` "refcomp", `kind` "xverse", `xverse_config` (JSON)
  and `source` (file names and SHA-256), written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..checkpoint import read_header
from ..errors import CheckpointError
from ..values import one_line, show
from ..xverse.adapter import XVerseAdapter
from ..xverse.config import XVerseConfig
from .instanceassemble import FLUX1, TargetSpec, _load_tensors, sha256
from .lora_keys import check_dims, check_metadata, multipliers, parse_lora, read_lora_file
from .tables import key_name, listing, summary, table_problems

log = logging.getLogger(__name__)

KIND = "xverse"
PREFIX = "xverse."
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.bin")
CONVERT = ("refcomp convert xverse --adapter XVerse/modulation_adapter --lora XVerse/pytorch_lora_weights.safetensors "
           "--out FILE.safetensors")
FLUX1_IN_CHANNELS = 64


@dataclass(frozen=True)
class XVerseInfo:
    """What a converted file says about itself."""

    config: XVerseConfig
    source: dict[str, Any] | None
    base_model: str | None


def adapter_folder(path: str | os.PathLike) -> Path:
    """The folder holding config.json: `path` itself, or its `modulation_adapter/`."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"--adapter: {folder} is not a folder; give XVerse's modulation_adapter/ folder "
                              "(config.json + diffusion_pytorch_model.safetensors)")
    if not (folder / "config.json").is_file() and (folder / "modulation_adapter" / "config.json").is_file():
        folder = folder / "modulation_adapter"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"--adapter {folder}: no config.json; give XVerse's modulation_adapter/ folder")
    return folder


def read_adapter_config(folder: Path, spec: TargetSpec = FLUX1,
                        in_channels: int = FLUX1_IN_CHANNELS) -> XVerseConfig:
    """config.json -> XVerseConfig (no LoRA sites yet) for the transformer `spec`."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"--adapter {path}: not a readable config.json ({one_line(err)})") from None
    config = XVerseConfig.from_released(raw, source=f"--adapter {path}", num_double_blocks=spec.num_double_blocks,
                                        num_single_blocks=spec.num_single_blocks, in_channels=in_channels,
                                        mlp_hidden=spec.mlp_hidden)
    if config.out_dim != spec.hidden_size:
        raise CheckpointError(f"--adapter {path}: out_dim is {config.out_dim}, but the FLUX transformer has hidden "
                              f"size {spec.hidden_size}; the offsets are added in its conditioning space, so these "
                              "files belong to another model")
    return config


def adapter_table(config: XVerseConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the released adapter weights (`net.*`, `net2.*`) and its shape, from the config."""
    with torch.device("meta"):
        adapter = XVerseAdapter(config)
    return {k: tuple(v.shape) for k, v in adapter.state_dict().items() if not k.startswith("lora.")}


def read_adapter_weights(folder: Path, config: XVerseConfig) -> tuple[dict[str, torch.Tensor], Path]:
    """The adapter tensors, checked exactly against `adapter_table(config)`; and the file read."""
    found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not found:
        raise CheckpointError(f"--adapter {folder}: no weights; expected one of {list(WEIGHT_FILES)} beside "
                              "config.json")
    path = found[0]
    if path.name.endswith(".index.json"):
        tensors = _read_shards(path)
    elif path.suffix == ".bin":
        tensors = _read_bin(path)
    else:
        tensors = _load_tensors(os.fspath(path), "--adapter")
    problems = table_problems(tensors, adapter_table(config))
    if problems:
        raise CheckpointError(f"--adapter {path}: the weights do not match config.json "
                              f"({json.dumps(config.released_config())}, {config.num_double_blocks} double blocks): "
                              f"{summary(problems)}. Give the config.json and weights of one XVerse "
                              "modulation_adapter release")
    return tensors, path


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    """A weights-only pickle holding a flat {name: tensor} (diffusers' `.bin` state dict)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:               # UnpicklingError, EOFError, RuntimeError (zip), ...
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"--adapter {path}: cannot be read as a weights-only PyTorch file ({type(err).__name__}: "
                              f"{first}); it is truncated, damaged, or holds more than tensors. Download the "
                              "released file again") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"--adapter {path}: expected a state dict of tensors, found {type(obj).__name__}")
    bad = [f"{show(k)}: {type(v).__name__}" for k, v in obj.items() if not isinstance(k, str)
           or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"--adapter {path}: expected a state dict of tensors, found {listing(bad)}")
    return dict(obj)


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    """A sharded safetensors adapter: the index's weight_map names shard files beside it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"--adapter {index}: not a safetensors index with a weight_map ({one_line(err)})") \
            from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or not (index.parent / shard).is_file():
            raise CheckpointError(f"--adapter {index}: shard {key_name(shard)} is not a file beside the index")
        part = _load_tensors(os.fspath(index.parent / shard), "--adapter")
        wrong = sorted(k for k in part if weight_map.get(k) != shard)
        if wrong:
            raise CheckpointError(f"--adapter {index.parent / shard}: holds {listing(wrong)}, which the index places "
                                  "elsewhere; the download is inconsistent")
        tensors.update(part)
    return tensors


def read_lora(path: str | os.PathLike, config: XVerseConfig) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor,
                                                                                      float]], int]:
    """XVerse's LoRA: {module path: (down (r, in), up (out, r), alpha / rank)} of the sites XVerse uses,
    and how many never-active modules (single-block norm.linear, proj_mlp) were dropped."""
    path = os.fspath(path)
    tensors, metadata = read_lora_file(path, "XVerse")
    released = config.released_lora_modules()
    modules = parse_lora(tensors, num_double=config.num_double_blocks, num_single=config.num_single_blocks,
                         source=f"--lora {path}", out_rows={m: rows for m, (_, rows) in released.items()})
    missing, extra = sorted(set(released) - set(modules)), sorted(set(modules) - set(released))
    if missing or extra:
        parts = ([f"missing modules {listing(missing)}"] if missing else []) + \
                ([f"modules XVerse's LoRA does not have {listing(extra)}"] if extra else [])
        raise CheckpointError(f"--lora {path}: not XVerse's LoRA for a FLUX model with {config.num_double_blocks} "
                              f"double and {config.num_single_blocks} single blocks: {'; '.join(parts)}")
    check_dims(modules, released, f"--lora {path}", config.out_dim)
    check_metadata(metadata, modules, f"--lora {path}")
    scale = multipliers(modules, f"--lora {path}")
    live = config.lora_sites()
    kept = {m: (lora.down, lora.up, scale[m]) for m, lora in modules.items() if m in live}
    return kept, len(modules) - len(kept)


def convert(*, adapter_dir: str | os.PathLike, lora: str | os.PathLike, out: str | os.PathLike,
            spec: TargetSpec = FLUX1, in_channels: int = FLUX1_IN_CHANNELS) -> XVerseInfo:
    """Convert XVerse's two released parts into one file at `out`; returns what it wrote."""
    folder = adapter_folder(adapter_dir)
    config = read_adapter_config(folder, spec, in_channels)
    weights, weight_file = read_adapter_weights(folder, config)
    sites, dropped = read_lora(lora, config)
    config = dataclasses.replace(config, lora={m: (int(d.shape[0]), s) for m, (d, _, s) in sites.items()})
    tensors = {PREFIX + k: v.contiguous() for k, v in weights.items()}
    for module, (down, up, _) in sites.items():
        tensors[f"{PREFIX}lora.{module}.down"] = down.clone()       # BFL-fused files share one down projection
        tensors[f"{PREFIX}lora.{module}.up"] = up.clone()
    _check_against_modules(tensors, config)
    source = {"method": "XVerse", "adapter_config": "config.json",
              "adapter_config_sha256": sha256(folder / "config.json"), "adapter_weights": weight_file.name,
              "adapter_weights_sha256": sha256(weight_file), "lora": os.path.basename(os.fspath(lora)),
              "lora_sha256": sha256(lora), "lora_modules": len(sites), "lora_dropped": dropped}
    meta = {"format": "refcomp", "kind": KIND, "xverse_config": config.to_json(),
            "base_model": json.dumps("FLUX.1-dev"), "source": json.dumps(source, sort_keys=True)}
    _write_atomic(out, tensors, meta)
    ranks = sorted({r for r, _ in config.lora.values()})
    log.info("XVerse: %d adapter tensors (%s parameters, from %s), %d LoRA modules kept (rank %s), %d never-active "
             "LoRA modules dropped", len(weights), f"{sum(t.numel() for t in weights.values()):,}", weight_file.name,
             len(sites), ranks[0] if len(ranks) == 1 else ranks, dropped)
    return XVerseInfo(config=config, source=source, base_model="FLUX.1-dev")


def _check_against_modules(tensors: dict[str, torch.Tensor], config: XVerseConfig) -> None:
    """A bug check, never the user's file: what is written must be exactly what `load_xverse` rebuilds."""
    with torch.device("meta"):
        expected = {PREFIX + k: tuple(v.shape) for k, v in XVerseAdapter(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        diff = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
        raise RuntimeError(f"XVerse conversion: written tensors disagree with XVerseAdapter at {diff[:5]}")


def _write_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """A killed or failing conversion leaves the old file or none, never half of one."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def read_xverse_info(path: str | os.PathLike) -> XVerseInfo:
    """The config and source of a converted XVerse file (header only). Refuses anything else and says
    how to make one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"converted XVerse file not found: {path}")
    try:
        header = read_header(path)
    except CheckpointError:
        raise CheckpointError(f"{path}: not a converted XVerse file (RefComp reads safetensors only, never pickle "
                              f"such as .bin/.pt/.pth). Convert XVerse's release once with `{CONVERT}`") from None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        meta = {}
    if meta.get("format") == "refcomp" and meta.get("kind") == KIND and "xverse_config" in meta:
        config, source, base = (meta.get(k) for k in ("xverse_config", "source", "base_model"))
        try:
            if not isinstance(config, str):
                raise CheckpointError("xverse_config metadata is not a JSON string")
            info = XVerseInfo(config=XVerseConfig.from_json(config), source=_json_field(source, dict),
                              base_model=_json_field(base, str))
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}; the file is damaged, convert XVerse's release again") from None
        return info
    if meta.get("format") == "refcomp":
        raise CheckpointError(f"{path}: a RefComp checkpoint of kind {show(meta.get('kind', 'adapter'))}, not "
                              "converted XVerse weights; load it with Load RefComp Model (load_adapter), or convert "
                              f"XVerse's release with `{CONVERT}`")
    raise CheckpointError(f"{path}: a safetensors file without RefComp's XVerse metadata (XVerse's released "
                          f"modulation adapter or LoRA is converted first). Run `{CONVERT}`")


def _json_field(text: object, kind: type) -> Any:
    """A metadata field holding JSON of type `kind` or null (None when absent)."""
    if text is None:
        return None
    try:
        value = json.loads(text) if isinstance(text, str) else ValueError
    except (ValueError, RecursionError):
        value = ValueError
    if value is not None and not isinstance(value, kind):
        raise CheckpointError(f"metadata field holding {key_name(text)} is not JSON {kind.__name__} or null")
    return value


def load_xverse(path: str | os.PathLike, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> tuple[XVerseAdapter, XVerseInfo]:
    """Rebuild the XVerse adapter from a converted file, strictly: every tensor present, none extra,
    every shape as its config says. Returns the adapter (eval mode, no gradients) and the file's info."""
    from safetensors.torch import load_file

    info = read_xverse_info(path)
    path = os.fspath(path)
    try:
        tensors = load_file(path)
    except Exception as err:               # safetensors raises its own SafetensorError for damaged files
        raise CheckpointError(f"{path}: a damaged or truncated safetensors file ({one_line(err)}); convert again") \
            from None
    foreign = sorted(k for k in tensors if not k.startswith(PREFIX))
    if foreign:
        raise CheckpointError(f"{path}: tensors outside the xverse namespace: {listing(foreign)}; the file is damaged")
    with torch.device("meta"):
        adapter = XVerseAdapter(info.config)
    problems = table_problems(tensors, {PREFIX + k: tuple(v.shape) for k, v in adapter.state_dict().items()})
    if problems:
        raise CheckpointError(f"{path}: the tensors do not match its xverse_config: {summary(problems)}; the file "
                              "is damaged, convert again")
    adapter.load_state_dict({k[len(PREFIX):]: v for k, v in tensors.items()}, strict=True, assign=True)
    adapter.requires_grad_(False).eval()
    adapter.to(device=device, dtype=dtype) if dtype is not None else adapter.to(device)
    return adapter, info
