"""Step 5 of training: the loop (accelerate: DDP/FSDP, mixed precision, clipping,
NaN guard, checkpoints, logs, progress bar).

Everything random in a step (noise, timesteps, dropped instances) comes from a
generator seeded by (seed, step, rank), and the batch is a pure function of the step
(`data.batch_for_step`), so a resumed run repeats exactly what an uninterrupted run
would have done.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from . import checkpoint as ckpt
from .attention import choose_attention_backends
from .config import TrainConfig
from .data import Sample, Skipped, batch_for_step, read_manifest
from .encoders import Frozen
from .features import bucket_members, load_batch
from .models import Needs, build_adapter, enable_gradient_checkpointing, load_frozen
from .step import TrainModel

log = logging.getLogger(__name__)
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Run:
    cfg: TrainConfig
    accelerator: Any
    frozen: Frozen
    model: Any
    optimizer: Any
    params: list
    samples: list[Sample]
    skipped: Skipped
    members: dict
    nograd_total: int = 0


def make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=os.path.join(cfg.output_dir, "logs"),
                                   automatic_checkpoint_naming=True, total_limit=cfg.checkpoints_total_limit)
    return Accelerator(mixed_precision=cfg.mixed_precision, log_with=_tracker(), project_config=project,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _tracker() -> str | None:
    try:
        import tensorboard  # noqa: F401
        return "tensorboard"
    except ImportError:
        log.warning("tensorboard is not installed: no training logs (pip install tensorboard)")
        return None


def setup(cfg: TrainConfig) -> Run:
    """Accelerator, data, frozen parts, adapter, optimizer."""
    from .precompute import precompute

    accelerator = make_accelerator(cfg)
    choose_attention_backends(accelerator.device, gradient_checkpointing=cfg.gradient_checkpointing,
                              policy=cfg.cudnn_attention)
    samples, skipped = read_manifest(cfg.data)
    if cfg.data.cache_dir:
        if accelerator.is_main_process:
            precompute(cfg, samples, skipped, accelerator.device)
        accelerator.wait_for_everyone()
    lc = cfg.loss
    needs = Needs(encoders=not cfg.data.cache_dir,
                  decoder=lc.identity_weight > 0 or lc.box_weight > 0 or cfg.validate_every > 0)
    frozen = load_frozen(cfg.models, needs, accelerator.device, DTYPES[cfg.mixed_precision])
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(frozen.transformer)
    model = TrainModel(build_adapter(cfg, frozen.transformer), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    return Run(cfg, accelerator, frozen, model, optimizer, params, samples, skipped, bucket_members(samples))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    return cfg.learning_rate


def train_step(run: Run, step: int) -> dict[str, Any]:
    """One optimizer step. A non-finite loss or gradient skips the update (all ranks agree).

    A loss with no grad path (e.g. stage 3 on a batch where no instance is FG, so the
    bridge is unused) comes back from the forward as a zero that touches every trainable
    parameter (`TrainModel.forward`, `grad_path` 0), so every rank still runs the same
    backward and DDP's all-reduce; when no rank had a grad path the update is skipped
    (zero gradients would still move AdamW's moments).
    """
    cfg, acc = run.cfg, run.accelerator
    ids = batch_for_step(run.samples, cfg.data, cfg.seed, step, acc.process_index, acc.num_processes)
    batch = load_batch(run.frozen, run.samples, ids, cfg.data, run.skipped, run.members)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + acc.process_index)
    out = run.model(batch, run.frozen, step, generator)
    has_grad = float(out.pop("grad_path"))
    loss = out["loss"]
    acc.backward(loss)
    norm = acc.clip_grad_norm_(run.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    loss_value = torch.as_tensor(loss, dtype=torch.float32, device=acc.device).detach()
    flags = torch.tensor([float(not (torch.isfinite(loss_value) and torch.isfinite(norm))), has_grad],
                         device=acc.device)
    flags = acc.reduce(flags, "sum")
    nonfinite, nograd = bool(flags[0] > 0), bool(flags[1] == 0)
    nograd_ranks = acc.num_processes - int(flags[1])
    lr = learning_rate(cfg, step)
    if nonfinite:
        log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped", step,
                    float(loss_value), float(norm))
    elif nograd:
        log.info("step %d: the loss has no grad path on any rank (nothing trainable was used); update skipped",
                 step)
    else:
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    terms = {k: v.detach() if torch.is_tensor(v) else torch.as_tensor(v) for k, v in out.items()}
    return {**terms, "loss": loss_value, "grad_norm": norm.detach(), "lr": lr, "nonfinite_skipped": nonfinite,
            "nograd_skipped": nograd and not nonfinite, "nograd_ranks": nograd_ranks}


def alpha_means(terms: dict[str, Any]) -> dict[str, float]:
    """Mean α of FG-/BG-labelled instances in the step's batch (absent when there were none)."""
    return {f"{key}_mean": float(terms[key].float().mean()) for key in ("alpha_fg", "alpha_bg")
            if key in terms and terms[key].numel()}


def log_step(run: Run, step: int, terms: dict[str, Any]) -> None:
    """Scalars (each loss term, lr, grad norm, skip counters, α means) to losses.jsonl every
    step and to tensorboard every `log_every`, plus α histograms for FG/BG-labelled instances."""
    acc = run.accelerator
    scalars = {f"loss/{k}": float(v) for k, v in terms.items() if torch.is_tensor(v) and v.ndim == 0
               and k not in ("grad_norm",)}
    run.nograd_total += int(terms["nograd_skipped"])
    scalars.update({"grad_norm": float(terms["grad_norm"]), "lr": terms["lr"],
                    "data/skipped": run.skipped.total, "nonfinite_skipped": float(terms["nonfinite_skipped"]),
                    "nograd_skipped": float(terms["nograd_skipped"]), "nograd_skipped_total": run.nograd_total,
                    "nograd_ranks": terms["nograd_ranks"],
                    **alpha_means(terms)})
    if acc.is_main_process:
        with open(os.path.join(run.cfg.output_dir, "losses.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
    if step % run.cfg.log_every and step != run.cfg.max_steps - 1:
        return
    acc.log(scalars, step=step)
    if acc.is_main_process and acc.trackers:
        writer = acc.get_tracker("tensorboard", unwrap=True)
        for key in ("alpha_fg", "alpha_bg"):
            if key in terms and terms[key].numel():
                writer.add_histogram(f"alpha/{key[6:]}", terms[key].float().cpu(), step)


def run_training(cfg: TrainConfig, resume_from: str | None = None) -> int:
    """The whole stage; returns 0. Exports OUTPUT/refcomp-stage<k>.safetensors at the end."""
    from tqdm.auto import tqdm

    from .validation import validate

    run = setup(cfg)
    acc, step = run.accelerator, 0
    ckpt.register_hooks(acc, run.model, stage=cfg.stage, base_model=cfg.models.base_model, get_step=lambda: step)
    if resume_from:
        step, counts = ckpt.resume(acc, cfg.output_dir, resume_from)
        run.skipped.counts.update(counts)
    acc.init_trackers("refcomp", config={"stage": cfg.stage, "lr": cfg.learning_rate, "max_steps": cfg.max_steps})
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not acc.is_local_main_process, desc=f"stage {cfg.stage}")
    while step < cfg.max_steps:
        terms = train_step(run, step)
        log_step(run, step, terms)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(terms['loss']):.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            ckpt.save_checkpoint(acc, step, dict(run.skipped.counts))
        if cfg.validate_every and step % cfg.validate_every == 0 and acc.is_main_process:
            validate(run, step)
    bar.close()
    ckpt.check_ranks_agree(acc, run.model)
    out = os.path.join(cfg.output_dir, f"refcomp-stage{cfg.stage}.safetensors")
    ckpt.export(acc, run.model, out, stage=cfg.stage, step=step, base_model=cfg.models.base_model)
    acc.wait_for_everyone()
    acc.end_training()
    log.info("done: %d steps, %d bad samples skipped %s, %d updates skipped for lack of a grad path", step,
             run.skipped.total, dict(run.skipped.counts), run.nograd_total)
    return 0
