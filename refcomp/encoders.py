"""Frozen encoders of the headless pipeline, loaded from local folders only.

- CLIP-L image: `CLIPVisionModelWithProjection.image_embeds` (r, 768): the projected
  image embedding (M1 alpha input; BG/MG visual feature).
- DINOv2: the CLS token `last_hidden_state[:, 0]` (r, 1024 for DINOv2-L). In
  transformers' `Dinov2Model` this is taken after the final LayerNorm, so it equals
  `pooler_output`; training must use the same vector.
- Captions: the pooled output of the pipeline's own CLIP-L text encoder (n, 768),
  tokenized exactly as FluxPipeline tokenizes its prompt; zeros for caption-less boxes.

All of these run once per sampling run (DESIGN §7), never per step.
Axis letters: r references, n instances, c channels.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from refcomp_core import InstanceFeatures, Layout
from refcomp_core.errors import ModelMismatchError
from refcomp_core.values import one_line

log = logging.getLogger(__name__)


@dataclass
class ImageEncoders:
    """The optional image encoders with their processors (None when not given)."""

    clip: Any = None
    clip_processor: Any = None
    dino: Any = None
    dino_processor: Any = None

    @property
    def clip_dim(self) -> int | None:
        return None if self.clip is None else int(self.clip.config.projection_dim)

    @property
    def dino_dim(self) -> int | None:
        return None if self.dino is None else int(self.dino.config.hidden_size)


def dtype_kwarg(package: str, since: str, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`{"dtype": dtype}` for versions of `package` that renamed `torch_dtype`, else the old name."""
    from importlib.metadata import version

    from packaging.version import Version

    return {"dtype" if Version(version(package)) >= Version(since) else "torch_dtype": dtype}


def _folder(path: str | os.PathLike, flag: str, what: str) -> str:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{flag}: {what} folder not found: {p}; pass a local folder saved with "
                                "save_pretrained (config.json, model weights, preprocessor_config.json)")
    return str(p)


def read_json_file(path: Path, flag: str) -> Any:
    """A model folder's JSON file; ModelMismatchError naming it when it is damaged."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise ModelMismatchError(f"{flag}: {path} is not readable JSON ({one_line(err)}); the folder is damaged: "
                                 "download or save the model again") from None


def read_model_type(folder: str, flag: str) -> str:
    """`model_type` of a transformers folder's config.json (ModelMismatchError naming the file otherwise)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelMismatchError(f"{flag}: no config.json in {folder}; pass a folder saved with save_pretrained")
    config = read_json_file(path, flag)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise ModelMismatchError(f"{flag}: {path} names no model_type; pass a folder saved with save_pretrained")
    return model_type


# flag -> (what it is, accepted config.json model_type values)
ENCODER_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--clip": ("CLIP", ("clip_vision_model", "clip")),      # a vision-only or a full CLIPModel folder
    "--dino": ("DINOv2", ("dinov2",)),
}


def check_encoder_folder(path: str | os.PathLike, flag: str) -> str:
    """The folder of the `flag` encoder, refused (before anything loads) unless its config.json
    names the right model type: transformers would otherwise load, e.g., a CLIP folder into a
    DINOv2 model with random weights."""
    what, accepted = ENCODER_KINDS[flag]
    folder = _folder(path, flag, what)
    found = read_model_type(folder, flag)
    if found not in accepted:
        raise ModelMismatchError(f"{flag}: {folder} holds a {found!r} model (config.json model_type), not {what} "
                                 f"({' or '.join(map(repr, accepted))}); pass the {what} folder")
    return folder


def check_encoder_folders(clip: str | os.PathLike | None, dino: str | os.PathLike | None) -> None:
    """`check_encoder_folder` for each encoder given (cheap: reads two config.json files)."""
    for flag, path in (("--clip", clip), ("--dino", dino)):
        if path is not None:
            check_encoder_folder(path, flag)


def _load_checked(model_class: Any, processor_class: Any, path: str | os.PathLike, flag: str,
                  dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, processor) from a checked folder; refused if any weight was missing (it
    would be random) or the folder cannot be loaded."""
    what, _ = ENCODER_KINDS[flag]
    folder = check_encoder_folder(path, flag)
    try:
        model, info = model_class.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                                  **dtype_kwarg("transformers", "4.56", dtype))
        processor = processor_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelMismatchError(f"{flag}: cannot load {what} from {folder} ({one_line(err)}); the folder needs "
                                 "config.json, the weights and preprocessor_config.json: save it again") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelMismatchError(f"{flag}: {folder} lacks {len(missing)} {what} weight(s) (e.g. {missing[0]}); "
                                 "they would be random: pass a complete folder")
    return model, processor


def load_clip_image(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(CLIPVisionModelWithProjection, CLIPImageProcessor) from a local folder.
    A full CLIPModel folder (e.g. clip-vit-large-patch14) also works."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model, processor = _load_checked(CLIPVisionModelWithProjection, CLIPImageProcessor, path, "--clip", dtype)
    return model.to(device).eval().requires_grad_(False), processor


def load_dino(path: str | os.PathLike, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(Dinov2Model, image processor) from a local folder."""
    from transformers import AutoImageProcessor, Dinov2Model

    model, processor = _load_checked(Dinov2Model, AutoImageProcessor, path, "--dino", dtype)
    return model.to(device).eval().requires_grad_(False), processor


def load_image_encoders(clip: str | os.PathLike | None, dino: str | os.PathLike | None, *,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ImageEncoders:
    enc = ImageEncoders()
    if clip is not None:
        enc.clip, enc.clip_processor = load_clip_image(clip, device=device, dtype=dtype)
    if dino is not None:
        enc.dino, enc.dino_processor = load_dino(dino, device=device, dtype=dtype)
    return enc


def _pixels(processor: Any, images: Sequence[Image.Image], model: Any) -> torch.Tensor:
    """(r, 3, H, W) on the model's device and dtype."""
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    return pixels.to(device=model.device, dtype=model.dtype)


@torch.no_grad()
def clip_image_embeds(model: Any, processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """(r, clip_dim) projected CLIP image embeddings, one batched call."""
    return model(pixel_values=_pixels(processor, images, model)).image_embeds.float()


@torch.no_grad()
def dino_cls(model: Any, processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """(r, dino_dim) DINOv2 CLS tokens (after the final LayerNorm), one batched call."""
    return model(pixel_values=_pixels(processor, images, model)).last_hidden_state[:, 0].float()


@torch.no_grad()
def caption_embeds(tokenizer: Any, text_encoder: Any, layout: Layout) -> torch.Tensor:
    """(n, text_dim) CLIP-L pooled text embedding per instance, of "" where a box has no caption
    (InstanceAssemble's layout net reads it; RefComp's own encoder masks those rows out)."""
    texts = [inst.caption or "" for inst in layout.instances]
    if not texts:
        return torch.zeros(0, int(text_encoder.config.hidden_size))
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device)).pooler_output.float().cpu()     # (n, c)


def instance_features(encoders: ImageEncoders, images: Sequence[Image.Image], layout: Layout, *,
                      tokenizer: Any, text_encoder: Any) -> InstanceFeatures:
    """Everything the adapter needs from the frozen encoders, computed once."""
    clip = dino = None
    if images and encoders.clip is not None:
        clip = clip_image_embeds(encoders.clip, encoders.clip_processor, images)
    if images and encoders.dino is not None:
        dino = dino_cls(encoders.dino, encoders.dino_processor, images)
    caption = caption_embeds(tokenizer, text_encoder, layout) if len(layout.instances) else None
    log.info("encoded %d reference(s) (CLIP %s, DINOv2 %s) and %d caption(s)", len(images),
             "on" if clip is not None else "off", "on" if dino is not None else "off",
             sum(1 for i in layout.instances if i.caption))
    return InstanceFeatures(clip_image=clip, dino=dino, caption=caption)
