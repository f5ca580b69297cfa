"""ComfyUI FLUX internals as RefComp sees them: model checks, block views, RoPE and
schedule conversions. Duck-typed over `comfy.ldm.flux` modules; `comfy` is only
imported inside functions, so the pure parts are testable without ComfyUI.

Axis letters: b batch, l tokens, h heads, c channels per head, d rotation pairs, D width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from refcomp_core.blocks import DoubleBlockView, SingleBlockView
from refcomp_core.errors import ModelMismatchError
from refcomp_core.geometry import TokenGrid
from refcomp_core.hosts.diffusers_flux import FluxDims
from refcomp_core.rope import Rope


@dataclass(frozen=True)
class ComfyFluxDims(FluxDims):
    """The core's FluxDims plus ComfyUI's latent patch size."""

    patch_size: int


def describe_model(model: Any) -> str:
    """'<BaseModel class> (diffusion model <class>)' for error messages."""
    base = getattr(model, "model", model)
    dm = getattr(base, "diffusion_model", None)
    return f"{type(base).__name__} (diffusion model {type(dm).__name__})"


def flux_dims(model: Any) -> ComfyFluxDims:
    """Dimensions of a ComfyUI MODEL (ModelPatcher) holding FLUX.1; refuses anything else.

    Raises `ModelMismatchError` naming the model type found.
    """
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    params = getattr(dm, "params", None)
    looks_flux = (dm is not None and params is not None and hasattr(dm, "double_blocks")
                  and hasattr(dm, "single_blocks") and hasattr(dm, "forward_orig"))
    try:
        from comfy.ldm.flux.model import Flux
        looks_flux = looks_flux and isinstance(dm, Flux)
    except ImportError:   # host-free tests use stand-ins
        pass
    if not looks_flux:
        raise ModelMismatchError(f"RefComp Apply (FLUX) needs a FLUX.1 model, but the MODEL plugged in is "
                                 f"{describe_model(model)}; load FLUX.1-dev, -schnell or Kontext with "
                                 "'Load Diffusion Model' and connect it")
    if getattr(params, "global_modulation", False):
        raise ModelMismatchError(f"RefComp Apply (FLUX) supports FLUX.1 only; the MODEL plugged in is a FLUX.2-style "
                                 f"model with global modulation ({describe_model(model)}); use a FLUX.1 model")
    if not all(hasattr(b, "img_mod") for b in dm.double_blocks):
        raise ModelMismatchError(f"RefComp Apply (FLUX): the double blocks of {describe_model(model)} have no "
                                 "per-block modulation; use a FLUX.1 model")
    return ComfyFluxDims(hidden_size=int(dm.hidden_size), num_double_blocks=len(dm.double_blocks),
                         num_single_blocks=len(dm.single_blocks), num_heads=int(dm.num_heads),
                         axes_dim=tuple(int(a) for a in params.axes_dim), theta=float(params.theta),
                         patch_size=int(params.patch_size))


def _silu_linear(linear: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: linear(F.silu(v))


def _qk_norm(norm: Any) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """ComfyUI QKNorm (RMSNorm over the last axis) on (b, l, h, c) q/k; dtype kept."""
    return lambda q, k: (norm.query_norm(q).to(q.dtype), norm.key_norm(k).to(k.dtype))


def _fused_qkv(linear: Callable[[torch.Tensor], torch.Tensor]):
    """The fused qkv Linear split into q, k, v (b, l, D) each: RefComp's LoRA is then
    added per slice as separate deltas, so no weight is rewritten."""
    return lambda x: tuple(linear(x).chunk(3, dim=-1))


def double_view(block: Any) -> DoubleBlockView:
    """View over a `comfy.ldm.flux.layers.DoubleStreamBlock` (its MLPs are Linear, GELU(tanh), Linear)."""
    return DoubleBlockView(
        heads=int(block.num_heads), img_mod=_silu_linear(block.img_mod.lin), txt_mod=_silu_linear(block.txt_mod.lin),
        img_norm1=block.img_norm1, img_norm2=block.img_norm2, txt_norm1=block.txt_norm1, txt_norm2=block.txt_norm2,
        img_qkv=_fused_qkv(block.img_attn.qkv), txt_qkv=_fused_qkv(block.txt_attn.qkv),
        img_qk_norm=_qk_norm(block.img_attn.norm), txt_qk_norm=_qk_norm(block.txt_attn.norm),
        img_proj=block.img_attn.proj, txt_proj=block.txt_attn.proj,
        img_mlp_hidden=lambda x: block.img_mlp[1](block.img_mlp[0](x)), img_mlp_out=block.img_mlp[2],
        txt_mlp_hidden=lambda x: block.txt_mlp[1](block.txt_mlp[0](x)), txt_mlp_out=block.txt_mlp[2])


def single_view(block: Any) -> SingleBlockView:
    """View over a `comfy.ldm.flux.layers.SingleStreamBlock`: `linear1` is the fused [q, k, v, mlp in]
    Linear, `linear2` the output over [attention | MLP]."""
    d, first = int(block.hidden_size), int(block.mlp_hidden_dim_first)

    def qkv_mlp(x: torch.Tensor):
        q, k, v, mlp = torch.split(block.linear1(x), [d, d, d, first], dim=-1)
        return q, k, v, mlp

    def mlp_act(mlp: torch.Tensor) -> torch.Tensor:
        if getattr(block, "yak_mlp", False):
            half = first // 2
            return block.mlp_act(mlp[..., half:]) * mlp[..., :half]
        return block.mlp_act(mlp)

    return SingleBlockView(heads=int(block.num_heads), mod=_silu_linear(block.modulation.lin), norm=block.pre_norm,
                           qkv_mlp=qkv_mlp, mlp_act=mlp_act, qk_norm=_qk_norm(block.norm), out=block.linear2)


def canonical_rope(pe: torch.Tensor) -> Rope:
    """ComfyUI's pe (b|1, 1, l, d, 2, 2) rotation matrices [[cos, -sin], [sin, cos]] -> Rope (b|1, l, d)."""
    if pe.ndim != 6 or pe.shape[-2:] != (2, 2):
        raise ValueError(f"RefComp: unexpected FLUX pe shape {tuple(pe.shape)}; expected (b, 1, L, d, 2, 2)")
    return Rope(pe[:, 0, :, :, 0, 0].float(), pe[:, 0, :, :, 1, 0].float())


def token_grid(latent_h: int, latent_w: int, patch_size: int) -> TokenGrid:
    """The main image grid of a latent: ceil(H/p) x ceil(W/p) tokens (ComfyUI pads to the
    patch size); the content covers H/p x W/p tokens."""
    return TokenGrid(h=math.ceil(latent_h / patch_size), w=math.ceil(latent_w / patch_size),
                     content_h=latent_h / patch_size, content_w=latent_w / patch_size)


def sigma_to_percent(percent_to_sigma: Callable[[float], Any], sigma: float, iterations: int = 48) -> float:
    """Schedule percent of a sigma, inverting ComfyUI's (decreasing) `model_sampling.percent_to_sigma`
    by bisection, so windows follow the ControlNet start/end percent convention."""
    to_sigma = lambda p: float(percent_to_sigma(p))   # noqa: E731
    if sigma >= to_sigma(0.0):
        return 0.0
    if sigma <= to_sigma(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if to_sigma(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def schedule_step(sample_sigmas: Any, sigma: float) -> tuple[int, int] | None:
    """(step index, step count) of a model call at `sigma` in ComfyUI's schedule
    (`transformer_options["sample_sigmas"]`: T + 1 decreasing sigmas ending at 0). The step is the
    schedule interval holding sigma (so a second-order sampler's extra call belongs to its step);
    None without a schedule."""
    if sample_sigmas is None or not torch.is_tensor(sample_sigmas) or sample_sigmas.numel() < 2:
        return None
    s = sample_sigmas.detach().float().cpu()
    steps = s.numel() - 1
    at_or_above = torch.nonzero(s[:-1] >= sigma * (1 - 1e-4)).flatten()
    step = int(at_or_above.max()) if at_or_above.numel() else 0
    return min(step, steps - 1), steps


def row_flags(batch: int, cond_or_uncond: list[int] | None, apply_to_uncond: bool) -> list[bool]:
    """Which batch rows are composed. ComfyUI batches chunks (0 = cond, 1 = uncond), each
    batch // len(chunks) rows; without the list every row counts as conditioned."""
    chunks = list(cond_or_uncond or [0])
    if batch % len(chunks):
        raise ValueError(f"RefComp: batch of {batch} rows does not split into {len(chunks)} cond/uncond chunks")
    per = batch // len(chunks)
    return [c == 0 or apply_to_uncond for c in chunks for _ in range(per)]
