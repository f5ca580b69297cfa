"""The one RefComp checkpoint file (DESIGN §5): safetensors only.

Metadata: `refcomp_config` (JSON of RefCompConfig), `stage`, `step`, `base_model`,
`format` = "refcomp", and `source` (JSON, what a converted file was made from). The trainer
and `refcomp convert` write exactly what ComfyUI and the headless pipeline load.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

import torch

from .adapter import RefCompAdapter
from .config import RefCompConfig
from .errors import CheckpointError


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
    tmp = f"{os.fspath(path)}.tmp"
    save_file(tensors, tmp, metadata=meta)
    os.chmod(tmp, 0o644)                 # safetensors writes 0600; model folders are often shared
    os.replace(tmp, path)


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
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (RefComp loads safetensors only)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (RefComp loads safetensors only)")
    return header


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    meta = read_header(path).get("__metadata__") or {}
    if meta.get("format") != "refcomp" or "refcomp_config" not in meta:
        raise CheckpointError(f"{os.fspath(path)}: a safetensors file but not a RefComp checkpoint (no "
                              "refcomp_config metadata); choose a file written by RefComp")
    return CheckpointInfo(config=RefCompConfig.from_json(meta["refcomp_config"]),
                          stage=json.loads(meta.get("stage", "null")), step=json.loads(meta.get("step", "null")),
                          base_model=json.loads(meta.get("base_model", "null")),
                          source=json.loads(meta.get("source", "null")))


def load_adapter(path: str | os.PathLike, *, hidden_size: int | None = None, num_double_blocks: int | None = None,
                 num_single_blocks: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> tuple[RefCompAdapter, CheckpointInfo]:
    """Rebuild an adapter from its file; with model dimensions given, check they fit."""
    from safetensors.torch import load_file

    info = read_info(path)
    cfg = info.config
    if hidden_size is not None:
        cfg.check_model(hidden_size=hidden_size,
                        num_double_blocks=cfg.num_double_blocks if num_double_blocks is None else num_double_blocks,
                        num_single_blocks=cfg.num_single_blocks if num_single_blocks is None else num_single_blocks)
    adapter = RefCompAdapter(cfg)
    tensors = load_file(os.fspath(path))
    bad = sorted({k.split(".")[0] for k in tensors} - set(adapter.namespaces))
    if bad:
        raise CheckpointError(f"{os.fspath(path)}: unknown tensor namespaces {bad}")
    missing, unexpected = adapter.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{os.fspath(path)}: tensors do not match its refcomp_config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]}); the file is damaged")
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
    from safetensors.torch import load_file

    info = read_info(path)
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
    missing, unexpected = adapter.load_state_dict(load_file(os.fspath(path)), strict=False)
    not_identity = [k for k in missing if not k.startswith(IDENTITY_KEYS)]
    if unexpected or not_identity:
        raise CheckpointError(f"{os.fspath(path)}: tensors do not match its refcomp_config (missing "
                              f"{not_identity[:5]}, unexpected {unexpected[:5]}); the file is damaged")
    return adapter, info
