"""What `bench/gpu_report.py` builds: a random FLUX.1-dev-sized diffusers transformer (or the tiny
dry-run one), random adapters in RefComp's and InstanceAssemble's formats, seeded layouts, the
sessions of a step inside and outside the layout window, and one training step of a stage.

Imports only torch, einops, diffusers and this checkout (what a GPU machine is given).
Axis letters: b batch, N image tokens, L text tokens, C latent channels, n instances, D width.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from common import BenchDims, seeded_boxes
from refcomp_core import (STAGE_MODULES, Controls, InstanceFeatures, RefCompAdapter, RefCompSession, build_state,
                          parse_layout)
from refcomp_core.config import IA_DOUBLE_SITES, IA_SINGLE_SITES, IAConfig
from refcomp_core.hosts.diffusers_flux import config_for, enable_gradient_checkpointing, patch_flux
from refcomp_core.layout import TOKEN_PX

# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, guidance_embeds=True,
                 axes_dims_rope=(4, 6, 6))
TINY_ADAPTER = dict(clip_dim=12, dino_dim=10, text_dim=8, visual_dim=10, alpha_hidden=16, dense_k=2, fourier_freqs=3,
                    modulation_rank=4, bridge_rank=3, lora_rank=4)


@dataclass(frozen=True)
class Setting:
    """flux: FluxTransformer2DModel kwargs; grid: image tokens per side (64 = 1024 px); text: text
    tokens; boxes: instance counts; sides in tokens; adapter: RefCompConfig overrides; ia: IAConfig
    sizes (its LoRA rank is not published for FLUX: 64 is a stand-in)."""

    flux: dict[str, Any]
    grid: int
    text: int
    boxes: tuple[int, ...]
    side_min: int
    side_max: int
    repeats: int
    warmup: int
    train_repeats: int
    adapter: dict[str, Any] = field(default_factory=dict)
    ia: dict[str, Any] = field(default_factory=lambda: dict(rank=64, dense_k=6, fourier_freqs=8, text_dim=768,
                                                            coord_dtype="bfloat16"))
    steps: int = 28

    @property
    def dims(self) -> BenchDims:
        f = self.flux
        return BenchDims(heads=f["num_attention_heads"], head_dim=f["attention_head_dim"], grid=self.grid,
                         text=self.text, side_min=self.side_min, side_max=self.side_max)

    @property
    def text_dim(self) -> int:
        return self.adapter.get("text_dim", 768)


FULL = Setting(FLUX_DEV, grid=64, text=512, boxes=(18, 50), side_min=8, side_max=32, repeats=5, warmup=2,
               train_repeats=2)
DRY = Setting(TINY_FLUX, grid=16, text=8, boxes=(18, 50), side_min=2, side_max=8, repeats=1, warmup=1,
              train_repeats=1, adapter=TINY_ADAPTER,
              ia=dict(rank=4, dense_k=2, fourier_freqs=3, text_dim=8, coord_dtype="float32"))


def build_transformer(s: Setting, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A random FluxTransformer2DModel allocated once, in `dtype`, on `device` (no fp32 copy of
    12B weights): built on the meta device, then given uniform(+-1/sqrt(fan_in)) weights (torch's
    Linear scale), zero biases and unit norm weights. The model has no buffers."""
    from diffusers import FluxTransformer2DModel
    with torch.device("meta"):
        model = FluxTransformer2DModel(**s.flux)
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                bound = 1 / math.sqrt(p[0].numel())
                p.uniform_(-bound, bound, generator=g)
            else:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
    return model.requires_grad_(False).eval()


def flux_inputs(s: Setting, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Inputs of one forward at batch 1: a grid x grid latent (N = grid^2) and `text` tokens."""
    g = torch.Generator().manual_seed(0)
    f, n = s.flux, s.grid * s.grid
    img_ids = torch.zeros(n, 3)
    img_ids[:, 1] = torch.arange(s.grid).repeat_interleave(s.grid).float()
    img_ids[:, 2] = torch.arange(s.grid).repeat(s.grid).float()
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)   # noqa: E731
    return dict(hidden_states=rand(1, n, f["in_channels"]), encoder_hidden_states=rand(1, s.text, f["joint_attention_dim"]),
                pooled_projections=rand(1, f["pooled_projection_dim"]), timestep=torch.full((1,), 0.7, device=device),
                guidance=torch.full((1,), 3.5, device=device), img_ids=img_ids.to(device),
                txt_ids=torch.zeros(s.text, 3, device=device), return_dict=False)


def _randomize(adapter: RefCompAdapter, scale: float = 0.02) -> RefCompAdapter:
    """Every weight random (no zero-init left), so every branch computes."""
    g = torch.Generator(device=adapter.device).manual_seed(1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * scale)
    return adapter.eval()


def refcomp_adapter(model: torch.nn.Module, s: Setting, device: torch.device, dtype: torch.dtype) -> RefCompAdapter:
    torch.manual_seed(0)
    return _randomize(RefCompAdapter(config_for(model, **s.adapter)).to(device, dtype))


def ia_adapter(model: torch.nn.Module, s: Setting, device: torch.device, dtype: torch.dtype) -> RefCompAdapter:
    """InstanceAssemble's format: its layout blocks (every third double block, single block 0), LoRA on
    every site of them, no identity pathway."""
    ia = dict(s.ia)
    rank = ia.pop("rank")
    doubles, singles = IAConfig.default_blocks(model.config.num_layers)
    lora = {f"{b}.{site}": (rank, 1.0) for b in doubles for site in IA_DOUBLE_SITES}
    lora |= {f"s{b}.{site}": (rank, 1.0) for b in singles for site in IA_SINGLE_SITES}
    cfg = IAConfig(double_blocks=doubles, single_blocks=singles, mlp_hidden=4 * model.inner_dim, lora=lora, **ia)
    overrides = {k: v for k, v in s.adapter.items() if k in ("clip_dim", "dino_dim", "text_dim", "visual_dim")}
    torch.manual_seed(0)
    adapter = RefCompAdapter(config_for(model, layout_pathway="instanceassemble", identity=False,
                                        instanceassemble=cfg, **overrides))
    return _randomize(adapter.to(device, dtype))


@dataclass(frozen=True)
class Scene:
    """One seeded layout and its encoder features (every other instance FG by its alpha override)."""

    layout: Any
    features: InstanceFeatures


def scene(adapter: RefCompAdapter, s: Setting, n: int, refs: int = 4) -> Scene:
    side = s.grid * TOKEN_PX
    inst = [{"box": list(b), "ref": i % refs, "caption": f"thing {i}", "alpha": 0.8 if i % 2 == 0 else 0.2}
            for i, b in enumerate(seeded_boxes(n, s.dims, n))]
    layout = parse_layout({"version": 1, "width": side, "height": side, "instances": inst}, num_refs=refs,
                          max_instances=max(50, n))
    cfg, g = adapter.config, torch.Generator().manual_seed(n)
    to = lambda t: t.to(adapter.device, adapter.dtype)   # noqa: E731
    return Scene(layout, InstanceFeatures(clip_image=to(torch.randn(refs, cfg.clip_dim, generator=g)),
                                          dino=to(torch.randn(refs, cfg.dino_dim, generator=g)),
                                          caption=to(torch.randn(n, cfg.text_dim, generator=g))))


def sessions(adapter: RefCompAdapter, sc: Scene, s: Setting) -> dict[str, RefCompSession]:
    """The sessions of a step inside the layout window (step 0) and outside it (mid-run)."""
    with torch.no_grad():
        state = build_state(adapter, sc.layout, sc.features)
    mid = s.steps // 2
    return {"in": RefCompSession(adapter, state, Controls(), progress=0.0, step=0, num_steps=s.steps),
            "out": RefCompSession(adapter, state, Controls(), progress=mid / s.steps, step=mid, num_steps=s.steps)}


def forward(model: torch.nn.Module, inputs: dict[str, Any], session: RefCompSession | None) -> Callable[[], Any]:
    """One transformer forward, vanilla (session None) or patched."""
    if session is None:
        return lambda: model(**inputs)

    def patched():
        with patch_flux(model, session):
            return model(**inputs)
    return patched


def stage_controls(stage: int) -> Controls:
    """As `training.step.stage_controls`: both windows open, stage 1 without modulation."""
    return Controls(layout_window=(0.0, 1.0), modulation_window=(0.0, 1.0), mask_margin=1.0, modulation=stage >= 2)


def training_step(model: torch.nn.Module, adapter: RefCompAdapter, sc: Scene | None, stage: int,
                  inputs: dict[str, Any], device: torch.device) -> Callable[[], None]:
    """One optimizer step of `stage` at batch 1: fp32 adapter under bf16 autocast (CUDA), gradient
    checkpointing, AdamW; the flow loss only (no auxiliary or region-preservation forwards).
    sc None: the floor, a vanilla forward + backward to the latent input."""
    enable_gradient_checkpointing(model)
    target = torch.randn(inputs["hidden_states"].shape, device=device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if sc is None:
        x = inputs["hidden_states"].detach().clone().requires_grad_(True)

        def floor() -> None:
            with autocast:
                loss = (model(**{**inputs, "hidden_states": x})[0].float() - target).square().mean()
            loss.backward()
            x.grad = None
        return floor
    trained = copy.deepcopy(adapter).float()
    trained.set_trainable(STAGE_MODULES[stage])
    trained.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    controls = stage_controls(stage)

    def step() -> None:
        with torch.autocast(device.type, enabled=False):
            state = build_state(trained, sc.layout, sc.features)
        with autocast, patch_flux(model, RefCompSession(trained, state, controls, progress=0.0)):
            loss = (model(**inputs)[0].float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step
