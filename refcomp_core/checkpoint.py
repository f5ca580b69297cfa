"""The one RefComp checkpoint file (DESIGN §5): safetensors only.

Metadata: `refcomp_config` (JSON of RefCompConfig), `stage`, `step`, `base_model`,
`format` = "refcomp", and `source` (JSON, what a converted file was made from). The trainer
and `refcomp convert` write exactly what ComfyUI and the headless pipeline load.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import torch

from .adapter import NAMESPACES, RefCompAdapter
from .atomic import atomic_path
from .config import RefCompConfig
from .errors import CheckpointError
from .values import one_line, show


@dataclass(frozen=True)
class CheckpointInfo:
    config: RefCompConfig
    stage: int | None
    step: int | None
    base_model: str | None
    source: dict[str, Any] | None = None


def save_adapter(path: str | os.PathLike, adapter: RefCompAdapter, *, stage: int | None = None,
                 step: int | None = None, base_model: str | None = None, source: dict[str, Any] | None = None) -> None:
    """Write the adapter as one .safetensors file (atomically: a kill never leaves half a file)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.state_dict().items()}
    meta = {"format": "refcomp", "refcomp_config": adapter.config.to_json(), "stage": json.dumps(stage),
            "step": json.dumps(step), "base_model": json.dumps(base_model)}
    if source is not None:
        meta["source"] = json.dumps(source, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The safetensors JSON header. Refuses anything that is not safetensors (e.g. pickle)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"RefComp checkpoint not found: {path}") if not os.path.exists(path) else \
            CheckpointError(f"RefComp checkpoint path is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size <= 0 or size > min(100_000_000, os.path.getsize(path) - 8):
            raise CheckpointError(f"{path}: not a safetensors file (RefComp loads safetensors only, never pickle "
                                  "checkpoints such as .pt/.pth/.ckpt/.bin). InstanceAssemble's layout.pth is "
                                  "converted once with `refcomp convert instanceassemble --layout layout.pth --lora "
                                  "pytorch_lora_weights.safetensors --out FILE.safetensors`")
        try:
            header = json.loads(f.read(size))
        except (ValueError, RecursionError):         # not UTF-8, not JSON, huge numbers, deep nesting
            raise CheckpointError(f"{path}: not a safetensors file (RefComp loads safetensors only)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (RefComp loads safetensors only)")
    return header


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """The config and training metadata of a RefComp file; `CheckpointError` naming the file
    (and the field) when the metadata is missing, damaged or of the wrong type."""
    return _info(os.fspath(path), read_header(path))


def _info(path: str, header: dict[str, Any]) -> CheckpointInfo:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the safetensors __metadata__ is not an object; the file is damaged")
    if meta.get("format") != "refcomp" or "refcomp_config" not in meta:
        raise CheckpointError(f"{path}: a safetensors file but not a RefComp checkpoint (no "
                              "refcomp_config metadata); choose a file written by RefComp")
    return CheckpointInfo(config=RefCompConfig.from_json(meta["refcomp_config"], source=f"{path}: refcomp_config"),
                          stage=_meta_value(path, meta, "stage", int), step=_meta_value(path, meta, "step", int),
                          base_model=_meta_value(path, meta, "base_model", str),
                          source=_meta_value(path, meta, "source", dict))


def _meta_value(path: str, meta: dict[str, Any], key: str, kind: type) -> Any:
    """Metadata `key`: the JSON of a `kind` or null (absent = null)."""
    text = meta.get(key, "null")
    try:
        value = json.loads(text) if isinstance(text, str) else _NOT_JSON
    except (ValueError, RecursionError):
        value = _NOT_JSON
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    what = {int: "an integer", str: "a string", dict: "an object"}[kind]
    raise CheckpointError(f"{path}: metadata {key} must be the JSON of {what} or null, got {show(text)}; the file "
                          "is damaged or was not written by RefComp")


_NOT_JSON = object()


def load_adapter(path: str | os.PathLike, *, hidden_size: int | None = None, num_double_blocks: int | None = None,
                 num_single_blocks: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> tuple[RefCompAdapter, CheckpointInfo]:
    """Rebuild an adapter from its file; with model dimensions given, check they fit.

    Everything is checked before the adapter is allocated: the config's fields and the
    shape, dtype and byte range of every tensor in the header. A damaged body (truncated,
    unreadable, NaN) raises `CheckpointError` naming the file too."""
    path = os.fspath(path)
    info = check_file(path)
    cfg = info.config
    if hidden_size is not None:
        cfg.check_model(hidden_size=hidden_size,
                        num_double_blocks=cfg.num_double_blocks if num_double_blocks is None else num_double_blocks,
                        num_single_blocks=cfg.num_single_blocks if num_single_blocks is None else num_single_blocks)
    adapter = RefCompAdapter(cfg)
    tensors = load_tensors(path)
    adapter.load_state_dict(tensors)          # names and shapes were checked against the header
    adapter.to(device=device, dtype=dtype) if dtype is not None else adapter.to(device)
    return adapter, info


# Fields of RefCompConfig that size the identity pathway (the rest must match the file).
IDENTITY_FIELDS = ("clip_dim", "dino_dim", "visual_dim", "text_dim", "alpha_hidden", "modulation_rank", "bridge_rank")
IDENTITY_KEYS = ("alpha.", "modulation.", "bridge.", "single_gate.", "encoder.visual.", "encoder.clip_to_visual.")


def add_identity(path: str | os.PathLike, *, hidden_size: int | None = None, num_double_blocks: int | None = None,
                 num_single_blocks: int | None = None, **identity: Any) -> tuple[RefCompAdapter, CheckpointInfo]:
    """An adapter from a file without the identity pathway (e.g. converted InstanceAssemble weights) with the
    identity pathway added on top, freshly initialised: alpha (M1), the zero-init visual projection into the
    instance token, the modulation head (last layer 0), the bridge and the single-block gates (0). Its output
    equals the file's on every layout until it trains. `identity` sets the IDENTITY_FIELDS."""
    info = check_file(path)
    unknown = sorted(set(identity) - set(IDENTITY_FIELDS))
    if unknown:
        raise ValueError(f"add_identity: {unknown} are not identity-pathway sizes; allowed {list(IDENTITY_FIELDS)}")
    if info.config.identity:
        raise CheckpointError(f"{os.fspath(path)} already has the identity pathway; load it with load_adapter")
    cfg = dataclasses.replace(info.config, identity=True, **identity)
    if hidden_size is not None:
        cfg.check_model(hidden_size=hidden_size, num_double_blocks=num_double_blocks or cfg.num_double_blocks,
                        num_single_blocks=num_single_blocks or cfg.num_single_blocks)
    adapter = RefCompAdapter(cfg)
    missing, unexpected = adapter.load_state_dict(load_tensors(path), strict=False)
    not_identity = [k for k in missing if not k.startswith(IDENTITY_KEYS)]
    if unexpected or not_identity:
        raise CheckpointError(f"{os.fspath(path)}: tensors do not match its refcomp_config (missing "
                              f"{not_identity[:5]}, unexpected {unexpected[:5]}); the file is damaged")
    return adapter, info


def check_file(path: str | os.PathLike) -> CheckpointInfo:
    """Everything about a RefComp file that can be checked without reading its tensors:
    the header, the metadata, the config, and each tensor's name, shape, dtype and byte
    range. Cheap (nothing is allocated), so callers run it before loading a model."""
    path = os.fspath(path)
    header = read_header(path)
    info = _info(path, header)
    bad = sorted({k.split(".")[0] for k in header if k != "__metadata__"} - set(NAMESPACES))
    if bad:
        raise CheckpointError(f"{path}: unknown tensor namespaces {bad}")
    check_tensor_table(path, header, info.config)
    return info


# safetensors dtype -> bytes per element, for the float dtypes an adapter may be saved in
FLOAT_DTYPES: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def check_tensor_table(path: str, header: dict[str, Any], cfg: RefCompConfig) -> None:
    """Every tensor `cfg` needs is in the header with its shape, a float dtype and a byte
    range inside the file; nothing else is. Shapes come from a meta-device adapter, so
    nothing is allocated however large the config claims to be."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in RefCompAdapter(cfg).state_dict().items()}
    except ValueError as err:                     # invariants the modules check (e.g. dino_dim == visual_dim)
        raise CheckpointError(f"{path}: refcomp_config: {err}; the file is damaged or was not written by "
                              "RefComp") from None
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    missing, unexpected = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match its refcomp_config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); the file is damaged")
    data_size = _data_size(path)
    for name, shape in expected.items():
        entry = entries[name]
        problem = _entry_problem(entry, shape, data_size)
        if problem:
            raise CheckpointError(f"{path}: tensor {name} {problem}; the file is damaged or truncated: copy or "
                                  "download it again")


def _entry_problem(entry: Any, shape: tuple[int, ...], data_size: int) -> str | None:
    if not isinstance(entry, dict) or entry.get("dtype") not in FLOAT_DTYPES:
        return f"has no float dtype ({show(entry.get('dtype') if isinstance(entry, dict) else entry)})"
    if entry.get("shape") != list(shape):
        return f"has shape {show(entry.get('shape'))} but its refcomp_config needs {list(shape)}"
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        return f"has bad data_offsets {show(offsets)}"
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        return f"lies beyond the end of the file (bytes {begin}..{end} of {data_size})"
    if end - begin != math.prod(shape) * FLOAT_DTYPES[entry["dtype"]]:
        return f"has {end - begin} bytes for shape {list(shape)} in {entry['dtype']}"
    return None


def _data_size(path: str) -> int:
    """Bytes after the safetensors header (read_header has checked the prefix)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - size


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; `CheckpointError` naming the file when the body is
    damaged or holds NaN / infinite values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read the tensors ({one_line(err)}); the file is damaged: copy or "
                              "download it again") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} holds NaN or infinite values ({len(bad)} tensor(s)); the "
                              "file is damaged or its training diverged: use an earlier checkpoint")
    return tensors
