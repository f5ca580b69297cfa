"""The training forward: one batch -> every loss term (the "loop" step calls this).

`TrainModel` wraps the adapter so DDP/FSDP see one module whose forward is the whole
step; the frozen parts are passed in, never registered (they are not synchronised).
Axis letters: b batch, N image tokens, C latent channels, n instances.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from refcomp_core import Controls, InstanceFeatures, RefCompAdapter, RefCompSession, TokenGrid, build_state
from refcomp_core.hosts.diffusers_flux import patch_flux

from . import losses as L
from .aux_losses import aux_losses
from .config import TrainConfig
from .encoders import Frozen, flux_ids
from .features import Batch


def stage_controls(cfg: TrainConfig) -> Controls:
    """Training keeps both windows fully open; stage 1 switches modulation off."""
    return Controls(layout_window=(0.0, 1.0), modulation_window=(0.0, 1.0), mask_margin=1.0,
                    modulation=cfg.modulation_enabled)


class TrainModel(nn.Module):
    """adapter + the stage's losses.  forward(batch, frozen, step, generator) -> terms."""

    def __init__(self, adapter: RefCompAdapter, cfg: TrainConfig) -> None:
        super().__init__()
        self.adapter = adapter
        self.cfg = cfg
        self.controls = stage_controls(cfg)

    def flux(self, fz: Frozen, batch: Batch, x_t: torch.Tensor, sigma: torch.Tensor,
             states: list | None) -> torch.Tensor:
        """FLUX velocity prediction (b, N, C); `states=None` runs vanilla FLUX."""
        t = fz.transformer
        dtype, b = fz.dtype, x_t.shape[0]
        img_ids, txt_ids = flux_ids(batch.grid, batch.prompt.shape[1], x_t.device)
        guidance = torch.full((b,), self.cfg.guidance, device=x_t.device) if t.config.guidance_embeds else None
        kwargs = dict(hidden_states=x_t.to(dtype), encoder_hidden_states=batch.prompt.to(dtype),
                      pooled_projections=batch.pooled.to(dtype), timestep=sigma.to(dtype), guidance=guidance,
                      img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
        if states is None:
            return t(**kwargs)[0]
        session = RefCompSession(self.adapter, states=states, controls=self.controls)
        session.progress = float(1 - sigma.float().mean())
        with patch_flux(t, session):
            return t(**kwargs)[0]

    def forward(self, batch: Batch, fz: Frozen, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        x0 = batch.latents.float()                                                 # (b, N, C)
        b, n_tok, _ = x0.shape
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        sigma = L.sample_sigmas(b, n_tok, lc, generator).to(x0.device)           # (b,)
        x_t = L.noisy_latents(x0, noise, sigma)
        states = [fp32_state(self.adapter, lay, f) for lay, f in zip(batch.layouts, batch.features)]
        pred = self.flux(fz, batch, x_t, sigma, states).float()
        terms = {"flow": L.flow_loss(pred, x0, noise)}
        if lc.rpl_weight > 0:
            terms["rpl"] = self.region_preservation(fz, batch, x_t, sigma, generator)
        if (lc.identity_weight > 0 or lc.box_weight > 0) and step % lc.aux_every == 0:
            terms.update(aux_losses(fz, batch, x_t, pred, sigma, states, lc))
        alpha, is_fg, predicted = labelled_alpha(batch, states, x0.device)
        if lc.route_weight > 0:
            terms["route"] = L.route_loss(alpha[predicted], is_fg[predicted], fg_target=lc.route_fg_target)
        weights = {"flow": 1.0, "rpl": lc.rpl_weight, "identity": lc.identity_weight, "box": lc.box_weight,
                   "route": lc.route_weight}
        total = sum(weights[k] * v for k, v in terms.items())
        grad_path = bool(total.requires_grad)
        if not grad_path:          # e.g. stage 3 on a batch without FG: nothing trainable was used
            total = total + sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return {"loss": total, **terms, **alpha_stats(alpha, is_fg),
                "grad_path": torch.tensor(float(grad_path), device=x0.device)}

    def region_preservation(self, fz: Frozen, batch: Batch, x_t: torch.Tensor, sigma: torch.Tensor,
                            generator: torch.Generator) -> torch.Tensor:
        """Drop a random subset S per row; inside S's boxes (minus kept boxes) the
        prediction with the reduced layout must match vanilla FLUX (DESIGN §6)."""
        grid = TokenGrid(*batch.grid)
        reduced, masks = [], []
        for lay, feats in zip(batch.layouts, batch.features):
            drop = torch.rand(len(lay.instances), generator=generator) < self.cfg.loss.rpl_drop_prob
            keep = [i for i in range(len(lay.instances)) if not drop[i]]
            boxes = [inst.box for inst in lay.instances]
            masks.append(L.region_mask([boxes[i] for i in range(len(boxes)) if drop[i]],
                                       [boxes[i] for i in keep], grid))
            small = dataclasses.replace(lay, instances=tuple(lay.instances[i] for i in keep))
            cap = feats.caption[keep] if feats.caption is not None else None
            reduced.append(fp32_state(self.adapter, small, InstanceFeatures(feats.clip_image, feats.dino, cap))
                           if keep else None)
        mask = torch.stack(masks).to(x_t.device)                                   # (b, N)
        if mask.sum() == 0:
            return x_t.new_zeros(())
        pred = self.flux(fz, batch, x_t, sigma, reduced).float()
        with torch.no_grad():
            vanilla = self.flux(fz, batch, x_t, sigma, None).float()
        return L.region_preservation_loss(pred, vanilla, mask)


def fp32_state(adapter: RefCompAdapter, layout, features: InstanceFeatures):
    """build_state outside autocast: the adapter's step-independent part runs in its own
    (fp32) dtype; under bf16 autocast `build_state` would mix dtypes in `index_put`."""
    device_type = adapter.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        return build_state(adapter, layout, features)


def labelled_alpha(batch: Batch, states: list, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """α of the instances with a reference and a depth label, in one gather per layout.
    -> alpha (m,), is_fg (m,) float, predicted (m,) bool: no manual override (what the
    routing prior trains)"""
    alphas, fg, predicted = [], [], []
    for lay, st in zip(batch.layouts, states):
        keep = [i for i, inst in enumerate(lay.instances) if inst.ref is not None and inst.depth is not None]
        if keep:
            alphas.append(st.alpha[torch.tensor(keep, device=st.alpha.device)])
            fg += [lay.instances[i].depth == "fg" for i in keep]
            predicted += [lay.instances[i].alpha is None for i in keep]
    if not alphas:
        empty = torch.zeros(0, device=device)
        return empty, empty, empty.bool()
    alpha = torch.cat(alphas).float()
    return (alpha, torch.tensor(fg, dtype=torch.float32, device=alpha.device),
            torch.tensor(predicted, dtype=torch.bool, device=alpha.device))


def routed_alpha(batch: Batch, states: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What the routing prior sees: predicted α (no manual override) and the fg label."""
    alpha, is_fg, predicted = labelled_alpha(batch, states, device)
    return alpha[predicted], is_fg[predicted]


def alpha_stats(alpha: torch.Tensor, is_fg: torch.Tensor) -> dict[str, torch.Tensor]:
    """α of instances labelled fg vs mg/bg in the manifest (detached, for logging).
    alpha, is_fg: (m,) from `labelled_alpha`"""
    alpha, is_fg = alpha.detach(), is_fg.bool()
    return {"alpha_fg": alpha[is_fg], "alpha_bg": alpha[~is_fg]}
