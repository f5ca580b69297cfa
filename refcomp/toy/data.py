"""Toy data: tensors of scenes for pretraining and evaluation, the frozen-encoder features
RefComp needs per layout, and a training manifest in the trainer's JSONL format.

Axis letters: b batch, r references, n instances, H W pixels, L text tokens, D width.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from refcomp_core import InstanceFeatures

from .backbone import TEXT_LEN
from .parts import ToyParts
from .world import ToyScene, sample_scene, scene_seed

log = logging.getLogger(__name__)


def scenes(split: str, start: int, count: int, size: int = 64) -> list[ToyScene]:
    return [sample_scene(scene_seed(split, i), size=size) for i in range(start, start + count)]


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """list of (H, W, 3) in [0, 1] -> (b, 3, H, W) float32."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float()


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) tensor or (H, W, 3) array in [0, 1] -> (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def prompts(parts: ToyParts, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global captions -> prompt tokens (b, L, D) and pooled vectors (b, D)."""
    out = parts.text.encode(parts.tokenizer, captions, max_length=TEXT_LEN)
    return out.last_hidden_state, out.pooler_output


@torch.no_grad()
def instance_features(parts: ToyParts, layout: dict, references: list[np.ndarray]) -> InstanceFeatures:
    """CLIP / DINO stand-in features of the references and pooled instance captions."""
    device = next(parts.clip.parameters()).device
    refs = to_tensor(references).to(device) if references else torch.zeros(0, 3, 64, 64, device=device)
    clip = parts.clip.features(refs)
    dino = parts.dino.features(refs)
    captions = [inst.get("caption") for inst in layout["instances"]]
    cap = torch.zeros(len(captions), parts.text.config.hidden_size, device=device)
    rows = [i for i, c in enumerate(captions) if c]
    if rows:
        cap[rows] = parts.text.encode(parts.tokenizer, [captions[i] for i in rows]).pooler_output
    return InstanceFeatures(clip_image=clip, dino=dino, caption=cap)


def write_manifest(folder: str, split: str, count: int, size: int = 64) -> str:
    """Render `count` scenes of `split` as PNGs with their references and a JSONL manifest
    (DESIGN §6 format). Resumable: existing image files are kept; the manifest is written
    last, atomically, so its presence means the data step is complete."""
    from PIL import Image
    from tqdm.auto import tqdm

    manifest = os.path.join(folder, "manifest.jsonl")
    if os.path.isfile(manifest):
        return manifest
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    lines = []
    for i in tqdm(range(count), desc=f"toy data ({split})"):
        scene = sample_scene(scene_seed(split, i), size=size)
        image = f"images/{i:06d}.png"
        if not os.path.isfile(os.path.join(folder, image)):
            Image.fromarray(to_uint8(scene.render())).save(os.path.join(folder, image))
        doc = scene.layout()
        for k, inst in enumerate(doc["instances"]):
            ref = f"refs/{i:06d}_{k}.png"
            if not os.path.isfile(os.path.join(folder, ref)):
                Image.fromarray(to_uint8(scene.reference(k))).save(os.path.join(folder, ref))
            inst["ref"] = ref
        lines.append(json.dumps({"image": image, "caption": doc["caption"], "width": doc["width"],
                                 "height": doc["height"], "instances": doc["instances"], "toy": doc["toy"]}))
    tmp = f"{manifest}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, manifest)
    log.info("toy data: %d %s scenes in %s", count, split, folder)
    return manifest
