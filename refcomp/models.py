"""Loading everything the headless pipeline needs, from local folders only.

`load_models(flux, adapter=..., xverse=..., clip=..., dino=...)` returns a `ComposeModels`
(FluxPipeline + RefComp adapter and/or converted XVerse + image encoders) that `compose`
can reuse across many layouts; nothing here reaches a hub (`local_files_only=True`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import check_file, load_adapter
from refcomp_core.errors import CheckpointError, ModelMismatchError
from refcomp_core.hosts.diffusers_flux import config_for, flux_dims
from refcomp_core.values import one_line, show

from .encoders import ImageEncoders, check_encoder_folders, dtype_kwarg, load_image_encoders, read_json_file
from .xverse_inputs import XVerseModels, check_xverse_file, load_xverse_models

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ComposeModels:
    """A loaded FluxPipeline, the RefComp adapter sized for its transformer (None: XVerse alone), the
    converted XVerse weights (None: RefComp alone), and the image encoders."""

    pipe: Any
    adapter: RefCompAdapter | None
    encoders: ImageEncoders
    xverse: XVerseModels | None = None

    @property
    def device(self) -> torch.device:
        return self.adapter.device if self.adapter is not None else self.pipe.transformer.device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_flux(path: str | os.PathLike, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> Any:
    """A diffusers FluxPipeline from a local folder (model_index.json, transformer, vae,
    text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler)."""
    from diffusers import FluxPipeline

    folder = Path(path)
    check_flux_folder(folder)
    try:
        pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True,
                                            **dtype_kwarg("diffusers", "0.42", dtype))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ModelMismatchError(f"--flux: cannot load the FLUX.1 pipeline from {folder} ({one_line(err)}); the "
                                 "folder is incomplete or damaged: download or save it again") from None
    pipe.to(device)
    flux_dims(pipe.transformer)      # refuses a non-FLUX transformer with a clear message
    return pipe


def check_flux_folder(folder: Path) -> None:
    """Refuse a folder whose model_index.json is missing, damaged or not a FLUX pipeline's,
    before diffusers loads anything."""
    index = folder / "model_index.json"
    if not index.is_file():
        what = "folder not found" if not folder.exists() else "no model_index.json in"
        raise FileNotFoundError(f"--flux: {what} {folder}; pass a local diffusers FLUX.1 folder (the "
                                "black-forest-labs/FLUX.1-dev layout: model_index.json, transformer/, vae/, "
                                "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)")
    spec = read_json_file(index, "--flux")
    name = spec.get("_class_name") if isinstance(spec, dict) else None
    if not (isinstance(name, str) and name.startswith("Flux")):
        raise ModelMismatchError(f"--flux: {index} describes a {show(name)} pipeline, not FLUX.1 (FluxPipeline); "
                                 "pass a FLUX.1-dev or FLUX.1-schnell diffusers folder")


def _check_adapter_fits(adapter: RefCompAdapter, encoders: ImageEncoders, text_dim: int) -> None:
    cfg = adapter.config
    caption_dim = cfg.instanceassemble.text_dim if cfg.instanceassemble is not None else cfg.text_dim
    pairs = (("--flux", "CLIP-L text width (text_encoder)", caption_dim, text_dim),)
    if cfg.identity:
        pairs = (("--clip", "CLIP image embed width", cfg.clip_dim, encoders.clip_dim),
                 ("--dino", "DINOv2 width", cfg.dino_dim, encoders.dino_dim)) + pairs
    for flag, what, ours, theirs in pairs:
        if theirs is not None and ours != theirs:
            raise CheckpointError(f"{flag}: the adapter expects a {what} of {ours}, but the model given has "
                                  f"{theirs}; use the encoder the adapter was trained with")


def fresh_adapter(transformer: Any, encoders: ImageEncoders, text_dim: int, **overrides: Any) -> RefCompAdapter:
    """A newly initialised adapter sized for this transformer and these encoders.
    Every new branch starts at zero, so it reproduces vanilla FLUX (for testing)."""
    dims: dict[str, Any] = {"text_dim": text_dim}
    if encoders.clip_dim is not None:
        dims["clip_dim"] = encoders.clip_dim
    if encoders.dino_dim is not None:
        dims["dino_dim"] = dims["visual_dim"] = encoders.dino_dim
    return RefCompAdapter(config_for(transformer, **{**dims, **overrides})).eval()


def load_models(flux: str | os.PathLike | Any, *, adapter: str | os.PathLike | RefCompAdapter | None = None,
                init_adapter: bool = False, clip: str | os.PathLike | None = None,
                dino: str | os.PathLike | None = None, xverse: str | os.PathLike | None = None,
                device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> ComposeModels:
    """Load FLUX (a folder, or an already built FluxPipeline), the adapter, XVerse and the encoders.

    `adapter` is a RefComp .safetensors file (a RefComp checkpoint or converted InstanceAssemble weights,
    checked against the model) or an adapter object; `init_adapter=True` instead builds a fresh adapter
    (equal to vanilla FLUX). `xverse` is a file from `refcomp convert xverse`; alone (no adapter) it
    composes plain FLUX with XVerse's identity pathway, and it needs `clip` (CLIP ViT-L/14).
    """
    torch_dtype = resolve_dtype(dtype)
    if adapter is None and not init_adapter and xverse is None:
        raise ValueError("--adapter: a RefComp checkpoint (.safetensors) is required (or --xverse for XVerse alone); "
                         "pass --init-adapter to run with a freshly initialised adapter instead (for testing: equals "
                         "vanilla FLUX)")
    if adapter is not None and init_adapter:
        raise ValueError("--adapter and --init-adapter are exclusive; pass one of them")
    check_encoder_folders(clip, dino)    # wrong or damaged folders fail before FLUX is loaded,
    if not hasattr(flux, "transformer"):
        check_flux_folder(Path(flux))
    if adapter is not None and not isinstance(adapter, RefCompAdapter):
        check_file(adapter)          # and so does a missing / pickle / foreign / damaged adapter file
    if xverse is not None:
        check_xverse_file(xverse)    # or XVerse file,
        if clip is None:             # or XVerse without its image encoder
            raise ValueError("--clip: XVerse reads each reference with CLIP ViT-L/14 vision; pass --clip DIR "
                             "(a local openai/clip-vit-large-patch14 folder)")
    pipe = flux if hasattr(flux, "transformer") else load_flux(flux, device=device, dtype=torch_dtype)
    encoders = load_image_encoders(clip, dino, device=device, dtype=torch_dtype)
    text_dim = int(pipe.text_encoder.config.hidden_size)
    dims = flux_dims(pipe.transformer)
    model: RefCompAdapter | None = None
    if isinstance(adapter, RefCompAdapter):
        adapter.config.check_model(hidden_size=dims.hidden_size, num_double_blocks=dims.num_double_blocks,
                                   num_single_blocks=dims.num_single_blocks)
        model = adapter
    elif adapter is not None:
        model, info = load_adapter(adapter, hidden_size=dims.hidden_size, num_double_blocks=dims.num_double_blocks,
                                   num_single_blocks=dims.num_single_blocks)
        log.info("adapter %s: stage %s, step %s, base model %s", os.fspath(adapter), info.stage, info.step,
                 info.base_model)
    elif init_adapter:
        log.warning("--init-adapter: using a freshly initialised RefComp adapter; the image equals vanilla FLUX "
                    "(use it to test the set-up, not to compose)")
        model = fresh_adapter(pipe.transformer, encoders, text_dim)
    if model is not None:
        _check_adapter_fits(model, encoders, text_dim)
        model = model.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    xv = None if xverse is None else load_xverse_models(xverse, pipe=pipe, clip=encoders.clip, device=device,
                                                        dtype=torch_dtype)
    return ComposeModels(pipe=pipe, adapter=model, encoders=encoders, xverse=xv)
