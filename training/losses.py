"""Step 4 of training: losses (DESIGN §6), each a plain function on tensors.

Axis letters: b batch, N image tokens, C channels, m instances in a loss, P patches.

α-weighted terms use a *detached* α as the weight: otherwise α would learn to shrink
whichever loss is large. α learns only through what it does to the image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum

from refcomp_core.geometry import TokenGrid, box_token_indices

from .config import LossConfig


def flux_shift_mu(seq_len: int, cfg: LossConfig) -> float:
    """FLUX's resolution-dependent shift: mu linear in the image token count."""
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_seq_len - cfg.base_seq_len)
    return cfg.base_shift + slope * (seq_len - cfg.base_seq_len)


def sample_sigmas(batch: int, seq_len: int, cfg: LossConfig, generator: torch.Generator) -> torch.Tensor:
    """FLUX timestep sampling: u = sigmoid(N(mean, std)), then the time shift
    sigma = e^mu / (e^mu + 1/u - 1). Larger images get noisier sigmas.  -> (b,) in (0, 1)"""
    u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch, generator=generator))
    if cfg.shift:
        mu = math.exp(flux_shift_mu(seq_len, cfg))
        u = mu / (mu + (1 / u - 1))
    return u.clamp(1e-5, 1 - 1e-5)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow: x_t = (1 - sigma) x0 + sigma noise.  x0, noise: (b, N, C), sigma: (b,)"""
    s = sigma.to(x0.dtype)[:, None, None]
    return (1 - s) * x0 + s * noise


def flow_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE to the velocity target v = noise - x0 (FLUX predicts v).  (b, N, C) -> ()"""
    return F.mse_loss(pred.float(), (noise - x0).float())


def predicted_x0(x_t: torch.Tensor, pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x̂0 = x_t - sigma v.  (b, N, C) -> (b, N, C)"""
    return x_t - sigma.to(x_t.dtype)[:, None, None] * pred


def identity_loss(crop_cls: torch.Tensor, ref_cls: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Mean over FG instances of stopgrad(α) · (1 − cos(DINO(x̂0 crop), DINO(ref))).

    crop_cls, ref_cls: (m, C); alpha: (m,) -> ()"""
    if crop_cls.shape[0] == 0:
        return crop_cls.new_zeros(())
    cos = F.cosine_similarity(crop_cls.float(), ref_cls.float(), dim=-1)
    return (alpha.detach().float() * (1 - cos)).mean()


def route_loss(alpha: torch.Tensor, is_fg: torch.Tensor, fg_target: float = 1.0) -> torch.Tensor:
    """Routing prior: binary cross-entropy of α toward the depth label (fg -> `fg_target`,
    mg/bg -> 0). A soft `fg_target` (in (0.5, 1]) keeps FG instances routed FG while leaving
    them (1 − fg_target) of the layout path's instance token, which α scales.

    The image alone gives α no reason to split FG from BG: in stage 1 only the (1 − α)
    layout path exists, and the discrete routing means an instance below 0.5 never feels
    the modulation path (bench/TOY.md measures the resulting collapse). The label is the
    one data prep already writes (a depth estimator), and α's input carries it.
    alpha, is_fg: (m,) -> ()"""
    if alpha.shape[0] == 0:
        return alpha.new_zeros(()).float()
    return F.binary_cross_entropy(alpha.float().clamp(1e-6, 1 - 1e-6), is_fg.float() * fg_target)


def soft_centroid(ref: torch.Tensor, patches: torch.Tensor, xy: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax-weighted centroid of the ref/patch cosine similarity.

    ref: (m, C); patches: (m, P, C) DINO patch features of the image each instance
    lives in; xy: (P, 2) normalized patch centres -> (m, 2) normalized (x, y)."""
    sim = einsum(F.normalize(ref.float(), dim=-1), F.normalize(patches.float(), dim=-1), "m c, m p c -> m p")
    weights = torch.softmax(sim / temperature, dim=-1)                           # (m, P)
    return weights @ xy.to(weights)                                              # (m, 2)


def box_alignment_loss(ref: torch.Tensor, patches: torch.Tensor, xy: torch.Tensor, centres: torch.Tensor,
                       alpha: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean of stopgrad(1 − α) · |soft centroid − box centre|₁ (a differentiable stand-in
    for a detector's centre error).  centres: (m, 2) normalized (x, y); alpha: (m,) -> ()"""
    if ref.shape[0] == 0:
        return patches.new_zeros(())
    err = (soft_centroid(ref, patches, xy, temperature) - centres.float()).abs().sum(-1)
    return ((1 - alpha.detach().float()) * err).mean()


def patch_centres(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """Normalized (x, y) centres of a (gh, gw) patch grid, row-major.  -> (gh*gw, 2)"""
    gh, gw = grid
    ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) / gh
    xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) / gw
    return torch.stack([xs.repeat(gh), ys.repeat_interleave(gw)], dim=-1)


def region_mask(dropped: list[tuple[float, ...]], kept: list[tuple[float, ...]], grid: TokenGrid) -> torch.Tensor:
    """Tokens inside the dropped instances' boxes and outside every kept box.  -> (N,) float"""
    mask = torch.zeros(grid.n)
    for box in dropped:
        mask[box_token_indices(box, grid)] = 1.0
    for box in kept:
        mask[box_token_indices(box, grid)] = 0.0
    return mask


def region_preservation_loss(pred: torch.Tensor, vanilla: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2 between the reduced-layout prediction and vanilla FLUX inside the mask (XVerse's
    RPL, adapted): conditioning must not leak into regions it does not own. Zero when
    nothing was dropped.  pred, vanilla: (b, N, C); mask: (b, N) -> ()"""
    m = mask.to(pred.dtype)[..., None]                                           # (b, N, 1)
    count = m.sum() * pred.shape[-1]
    if count == 0:
        return pred.new_zeros(()).float() + 0.0 * pred.sum().float()
    return (((pred.float() - vanilla.detach().float()) ** 2) * m).sum() / count
