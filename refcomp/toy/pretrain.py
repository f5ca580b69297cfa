"""Pretraining the toy's frozen parts (resumable, with progress bars).

- Image encoders: a few hundred steps of attribute classification on references and
  (blurred, noisy) scene crops, so the CLIP / DINOv2 stand-ins carry what the real ones
  carry; the classifier heads are thrown away.
- Backbone: caption-conditioned rectified flow on toy scenes (10 % empty captions for CFG).

Each loop saves `<name>-train.safetensors` (weights, Adam moments, step) every
`save_every` steps and resumes from it; the finished part is written by the caller.
Everything random in a step comes from a generator seeded by (seed, step).
Axis letters: b batch, N tokens, C channels, H W pixels.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import DEFAULT_SHIFT, token_grid, train_sigmas, velocity
from .data import prompts, scenes, to_tensor
from .packing import pack
from .parts import ToyParts
from .vision import ROLE_HEADS, ToyImageEncoder
from .vocab import COLOURS, SHAPES, TEXTURES

log = logging.getLogger(__name__)
LABELS = {"colour": list(COLOURS), "shape": list(SHAPES), "texture": list(TEXTURES)}


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int
    learning_rate: float
    warmup: int = 100
    save_every: int = 100
    seed: int = 0
    final_lr_fraction: float = 0.1


def save_state(path: str, module: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    from safetensors.torch import save_file
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
        for key, value in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, f"{path}.tmp", metadata={"step": json.dumps(step)})
    os.replace(f"{path}.tmp", path)


def load_state(path: str, module: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restore weights and Adam moments; returns the step to continue from (0 if no file)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        return 0
    tensors = load_file(path)
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
        state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if state:
            opt.state[p] = state
    with safe_open(path, framework="pt") as f:
        return int(json.loads(f.metadata()["step"]))


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Linear warmup, then cosine decay to `final_lr_fraction` at the last step."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup - 1)
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def run_loop(name: str, module: torch.nn.Module, params: list, loss_fn: Callable[[int, torch.Generator],
             torch.Tensor], cfg: LoopConfig, folder: str) -> list[float]:
    """Generic resumable AdamW loop with warmup, clipping and a progress bar -> losses of this call."""
    from tqdm.auto import tqdm
    os.makedirs(folder, exist_ok=True)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    path = os.path.join(folder, f"{name}-train.safetensors")
    start = load_state(path, module, opt)
    losses = []
    module.train()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {name}")
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate * lr_factor(step, cfg)
        loss = loss_fn(step, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_state(path, module, opt, step + 1)
            with open(os.path.join(folder, f"{name}-losses.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step + 1, "loss": float(np.mean(losses[-cfg.save_every:]))}) + "\n")
    bar.close()
    module.eval()
    return losses


def _encoder_batch(step: int, batch: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """References and scene crops of random objects, with attribute labels."""
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 31, (1,), generator=g)))
    images, labels = [], {k: [] for k in LABELS}
    for scene in scenes("train", 5_000_000 + step * batch, batch):
        k = int(rng.integers(len(scene.objects)))
        obj = scene.objects[k]
        if rng.random() < 0.5:
            img = torch.from_numpy(scene.reference(k)).permute(2, 0, 1)
        else:
            x0, y0, x1, y1 = obj.box
            m = int(rng.integers(0, 1 + max(x1 - x0, y1 - y0) // 3))
            x0, y0, x1, y1 = max(0, x0 - m), max(0, y0 - m), min(scene.size, x1 + m), min(scene.size, y1 + m)
            crop = torch.from_numpy(scene.render()[y0:y1, x0:x1]).permute(2, 0, 1)[None]
            img = F.interpolate(crop, size=(scene.size, scene.size), mode="bilinear", align_corners=False)[0]
        images.append(img)
        for key in LABELS:
            labels[key].append(LABELS[key].index(getattr(obj, key)))
    x = torch.stack(images)
    if rng.random() < 0.5:                                                    # blur, like an early x0 estimate
        x = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    x = (x + torch.randn(x.shape, generator=g) * float(rng.uniform(0, 0.08))).clamp(0, 1)
    return x, {k: torch.tensor(v) for k, v in labels.items()}


def pretrain_encoder(encoder: ToyImageEncoder, cfg: LoopConfig, folder: str) -> list[float]:
    """Attribute classification from the role's feature; the heads are discarded afterwards."""
    role = encoder.config.role
    dim = encoder.config.projection_dim if role == "clip" else encoder.config.hidden_size
    torch.manual_seed(cfg.seed)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, len(LABELS[k])) for k in ROLE_HEADS[role]})
    both = torch.nn.ModuleDict({"encoder": encoder, "heads": heads})

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        x, labels = _encoder_batch(step, cfg.batch_size, g)
        feat = encoder.features(x)
        return sum(F.cross_entropy(head(feat), labels[k]) for k, head in heads.items())

    losses = run_loop(role, both, list(both.parameters()), loss_fn, cfg, folder)
    encoder.requires_grad_(False)
    return losses


def pretrain_backbone(parts: ToyParts, cfg: LoopConfig, folder: str, caption_dropout: float = 0.1,
                      size: int = 64) -> list[float]:
    """Caption-conditioned rectified flow on toy scenes."""
    model = parts.transformer
    model.requires_grad_(True)
    grid = token_grid(size, size)

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        batch = scenes("train", step * cfg.batch_size, cfg.batch_size, size)
        x0 = pack(to_tensor([s.render() for s in batch]))                              # (b, N, C)
        drop = torch.rand(len(batch), generator=g) < caption_dropout
        prompt, pooled = prompts(parts, ["" if d else s.caption for s, d in zip(batch, drop)])
        noise = torch.randn(x0.shape, generator=g)
        sigma = train_sigmas(len(batch), g, DEFAULT_SHIFT)                              # (b,)
        s = sigma[:, None, None]
        x_t = (1 - s) * x0 + s * noise
        return F.mse_loss(velocity(model, x_t, sigma, prompt, pooled, grid), noise - x0)

    losses = run_loop("backbone", model, list(model.parameters()), loss_fn, cfg, folder)
    model.requires_grad_(False)
    return losses
