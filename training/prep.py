"""The three models behind `refcomp prepare-data`, all through transformers from local
folders: a SAM-family segmenter prompted with a grid of points, a Depth Anything
depth estimator, and an image-to-text captioner (e.g. BLIP).

Axis letters: q point prompts, k masks per prompt, H/W pixels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOptions:
    """points_per_side² point prompts; masks scored by SAM's predicted IoU, kept above
    `min_score`, with an area fraction in [min_area, max_area], de-duplicated by mask
    IoU (`nms_iou`), at most `max_instances`, each box at least `min_box_px` a side."""

    points_per_side: int = 8
    min_score: float = 0.8
    min_area: float = 0.01
    max_area: float = 0.95
    nms_iou: float = 0.7
    max_instances: int = 20
    min_box_px: int = 16


class Segmenter:
    """SAM (transformers SamModel/SamProcessor) over a uniform grid of point prompts."""

    def __init__(self, path: str, device: torch.device, options: SegmentOptions) -> None:
        from transformers import SamModel, SamProcessor
        self.model = SamModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = SamProcessor.from_pretrained(path, local_files_only=True)
        self.device, self.opt = device, options

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[np.ndarray]:
        """-> instance masks, (H, W) bool each, best first."""
        w, h = image.size
        n = self.opt.points_per_side
        grid = [[[(i + 0.5) * w / n, (j + 0.5) * h / n]] for j in range(n) for i in range(n)]   # (q, 1, 2)
        inputs = self.processor(images=image, input_points=[grid], return_tensors="pt").to(self.device)
        out = self.model(**inputs, multimask_output=True)
        masks = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"].cpu(),
                                                  inputs["reshaped_input_sizes"].cpu())[0]     # (q, k, H, W)
        scores = out.iou_scores[0].float().cpu()                                              # (q, k)
        best = scores.argmax(dim=-1)
        candidates = []
        for q in range(masks.shape[0]):
            mask, score = masks[q, best[q]].numpy().astype(bool), float(scores[q, best[q]])
            area = mask.mean()
            if score >= self.opt.min_score and self.opt.min_area <= area <= self.opt.max_area:
                candidates.append((score, mask))
        return self._dedupe(sorted(candidates, key=lambda c: -c[0]), w, h)

    def _dedupe(self, candidates: list[tuple[float, np.ndarray]], w: int, h: int) -> list[np.ndarray]:
        kept: list[np.ndarray] = []
        for _, mask in candidates:
            box = mask_box(mask)
            if box is None or (box[2] - box[0]) * w < self.opt.min_box_px or (box[3] - box[1]) * h < self.opt.min_box_px:
                continue
            if all((mask & k).sum() / max(1, (mask | k).sum()) < self.opt.nms_iou for k in kept):
                kept.append(mask)
            if len(kept) == self.opt.max_instances:
                break
        return kept


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalized [x0, y0, x1, y1] of a (H, W) bool mask, or None when empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    h, w = mask.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h


class DepthLabeller:
    """Depth Anything (transformers AutoModelForDepthEstimation). Labels come from
    per-image quantiles: the nearest third of the image's depth range is fg, the middle
    mg, the rest bg. Depth Anything predicts relative inverse depth (larger = nearer);
    set `larger_is_nearer=False` for a model that predicts distance."""

    def __init__(self, path: str, device: torch.device, larger_is_nearer: bool = True) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        self.model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.device, self.sign = device, 1.0 if larger_is_nearer else -1.0

    @torch.no_grad()
    def __call__(self, image: Image.Image, masks: list[np.ndarray]) -> list[str]:
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        depth = self.model(**inputs).predicted_depth.float().cpu()                           # (1, h, w)
        depth = F.interpolate(depth[None], size=image.size[::-1], mode="bilinear", align_corners=False)[0, 0]
        nearness = self.sign * depth.numpy()                                                   # (H, W)
        q1, q2 = np.quantile(nearness, [1 / 3, 2 / 3])
        labels = []
        for mask in masks:
            value = float(np.median(nearness[mask])) if mask.any() else float(q1)
            labels.append("fg" if value >= q2 else "mg" if value >= q1 else "bg")
        return labels


class Captioner:
    """Any transformers image-to-text model with `generate` (BLIP, ...)."""

    def __init__(self, path: str, device: torch.device, max_new_tokens: int = 30, batch: int = 16) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.device, self.max_new_tokens, self.batch = device, max_new_tokens, batch

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), self.batch):
            inputs = self.processor(images=images[i:i + self.batch], return_tensors="pt").to(self.device)
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            out += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out


def cutout(image: Image.Image, mask: np.ndarray, box: tuple[float, float, float, float]) -> Image.Image:
    """The instance as an RGBA crop of its box, alpha = the mask."""
    w, h = image.size
    x0, y0, x1, y1 = round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)
    rgba = np.concatenate([np.asarray(image.convert("RGB")), (mask[..., None] * 255).astype(np.uint8)], axis=-1)
    return Image.fromarray(rgba[y0:y1, x0:x1], mode="RGBA")


def on_white(crop: Image.Image) -> Image.Image:
    """RGBA -> RGB over white (what the captioner sees)."""
    background = Image.new("RGB", crop.size, (255, 255, 255))
    background.paste(crop, mask=crop.split()[-1])
    return background
