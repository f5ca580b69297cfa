"""ComfyUI runtime glue: the `models/refcomp` folder, progress bars, adapter loading, alpha prediction."""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch

from refcomp_core.checkpoint import load_adapter
from refcomp_core.layout import Layout
from refcomp_core.state import InstanceFeatures, predict_alpha

from .types import RefCompModel

log = logging.getLogger(__name__)

FOLDER = "refcomp"
EXTENSIONS = {".safetensors"}
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def register_folder() -> None:
    """Register `models/refcomp` (paths from extra_model_paths.yaml under `refcomp:` are kept)."""
    import folder_paths

    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    paths, exts = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)


def checkpoint_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(FOLDER)


def progress_bar(total: int) -> Callable[[int, int], None]:
    """A ComfyUI progress bar as a (done, total) callback."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(total, 1))
    return lambda done, of: bar.update_absolute(done, of)


def auto_dtype(device: torch.device) -> torch.dtype:
    import comfy.model_management as mm

    return torch.bfloat16 if device.type != "cpu" and mm.should_use_bf16(device) else torch.float32


class AdapterHolder(torch.nn.Module):
    """Holds the RefCompAdapter for ComfyUI's model patcher, which writes bookkeeping
    attributes (device, lowvram flags, ...) onto the module it manages."""

    def __init__(self, adapter: torch.nn.Module) -> None:
        super().__init__()
        self.adapter = adapter


def adapter_patcher(adapter: torch.nn.Module):
    """The adapter in a ComfyUI model patcher (load device / offload device), so ComfyUI moves it."""
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.CoreModelPatcher(AdapterHolder(adapter), load_device=mm.get_torch_device(),
                                                offload_device=mm.unet_offload_device())


def load_refcomp_model(name: str, dtype: str = "auto") -> RefCompModel:
    """Load `models/refcomp/<name>` into a ComfyUI model patcher (weights stay on the offload device)."""
    import comfy.model_management as mm
    import folder_paths

    if dtype not in DTYPES:
        raise ValueError(f"Load RefComp Model: dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if not name:
        raise FileNotFoundError("Load RefComp Model: no checkpoint chosen; put a RefComp .safetensors file into "
                                "ComfyUI/models/refcomp/ and refresh")
    path = folder_paths.get_full_path_or_raise(FOLDER, name)
    bar = progress_bar(2)
    load_device, offload = mm.get_torch_device(), mm.unet_offload_device()
    if is_xverse_file(path):
        return load_xverse_model(path, name, DTYPES[dtype] or auto_dtype(load_device))
    adapter, info = load_adapter(path, device=offload, dtype=DTYPES[dtype] or auto_dtype(load_device))
    adapter.eval().requires_grad_(False)
    bar(1, 2)
    patcher = adapter_patcher(adapter)
    bar(2, 2)
    log.info("RefComp: loaded %s (stage %s, step %s, hidden %d)", name, info.stage, info.step, info.config.hidden_size)
    return RefCompModel(patcher=patcher, info=info, name=name)


def is_xverse_file(path: str) -> bool:
    """A safetensors file written by `refcomp convert xverse` (its metadata says kind "xverse")."""
    from refcomp_core.checkpoint import read_header

    meta = read_header(path).get("__metadata__") or {}
    return isinstance(meta, dict) and meta.get("kind") == "xverse"


def load_xverse_model(path: str, name: str, dtype: torch.dtype) -> RefCompModel:
    """A converted XVerse file: its LoRA and its T-Mod adapter in two ComfyUI model patchers, so the adapter
    (only needed once per composition) can be offloaded while the LoRA samples."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from refcomp_core.released.xverse import load_xverse

    adapter, info = load_xverse(path, device=mm.unet_offload_device(), dtype=dtype)

    def patcher(module: torch.nn.Module):
        return comfy.model_patcher.CoreModelPatcher(AdapterHolder(module), load_device=mm.get_torch_device(),
                                                    offload_device=mm.unet_offload_device())

    resampler = torch.nn.ModuleDict({"net": adapter.net, "net2": adapter.net2})
    log.info("RefComp: loaded XVerse %s (%s)", name, (info.source or {}).get("method", "converted"))
    return RefCompModel(patcher=patcher(adapter.lora), info=info, name=name, kind="xverse", xverse=adapter,
                        resampler=patcher(resampler))


def predict_alphas(adapter, layout: Layout, features: InstanceFeatures) -> torch.Tensor:
    """alpha per instance (manual > M1 prediction; caption-only 0) on the adapter's device. -> (n,)"""
    with torch.no_grad():
        return predict_alpha(adapter, layout, features).float().cpu()
