"""The DINO-based auxiliary losses on the decoded x̂0 (identity and box alignment).

Only rows with sigma <= loss.aux_max_sigma take part (x̂0 is meaningless at pure
noise). The VAE decoder and DINOv2 are frozen but differentiable, so the gradient
reaches the adapter through the velocity prediction.
Axis letters: b rows, m instances, P DINO patches, C channels, H/W pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import losses as L
from .config import LossConfig
from .encoders import Frozen, decode_tokens, dino_tokens
from .features import Batch


def box_crop(image: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """image: (3, H, W); normalized box -> (3, size, size) (differentiable)."""
    _, h, w = image.shape
    x0, y0 = int(box[0] * w), int(box[1] * h)
    x1, y1 = max(x0 + 1, round(box[2] * w)), max(y0 + 1, round(box[3] * h))
    crop = image[:, y0:y1, x0:x1][None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]


def aux_losses(fz: Frozen, batch: Batch, x_t: torch.Tensor, pred: torch.Tensor, sigma: torch.Tensor,
               states: list, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """{"identity": (), "box": ()} over the eligible rows (zeros when none)."""
    zero = pred.sum() * 0.0
    rows = [i for i in range(x_t.shape[0]) if float(sigma[i]) <= cfg.aux_max_sigma]
    if not rows:
        return {"identity": zero, "box": zero}
    x0 = L.predicted_x0(x_t[rows], pred[rows], sigma[rows])                          # (b', N, C)
    images = decode_tokens(fz, x0, batch.grid)                                         # (b', 3, H, W)
    size = fz.dino.config.image_size
    crops, crop_ref, crop_alpha = [], [], []
    box_ref, box_row, box_centre, box_alpha = [], [], [], []
    for j, i in enumerate(rows):
        lay, st, dino = batch.layouts[i], states[i], batch.features[i].dino
        for k, inst in enumerate(lay.instances):
            if inst.ref is None:
                continue
            ref = dino[inst.ref]
            if st.is_fg[k] and cfg.identity_weight > 0:
                crops.append(box_crop(images[j], inst.box, size))
                crop_ref.append(ref)
                crop_alpha.append(st.alpha[k])
            box_ref.append(ref)
            box_row.append(j)
            box_centre.append(torch.tensor(inst.centre))
            box_alpha.append(st.alpha[k])
    out = {"identity": zero, "box": zero}
    if crops:
        cls = dino_tokens(fz, torch.stack(crops))[0]                                    # (m, C)
        out["identity"] = L.identity_loss(cls, torch.stack(crop_ref), torch.stack(crop_alpha))
    if box_ref and cfg.box_weight > 0:
        _, patches, grid = dino_tokens(fz, images)                                      # (b', P, C)
        xy = L.patch_centres(grid, device=patches.device)
        out["box"] = L.box_alignment_loss(torch.stack(box_ref), patches[torch.tensor(box_row)], xy,
                                          torch.stack(box_centre).to(patches.device), torch.stack(box_alpha),
                                          cfg.box_temperature)
    return out
