"""`refcomp toy reproduce`: the whole toy pipeline from one command, resumable.

Steps, each skipped when its output exists (a killed run picks up where it stopped):
  encoders  -> parts/{text,clip,dino}.safetensors        (brief attribute pretraining)
  backbone  -> parts/backbone.safetensors                (caption-conditioned rectified flow)
  data      -> data/train/manifest.jsonl (+ an α = 0.5 copy for the ablation)
  stages    -> data/cache/ (the frozen encoders' features, once), then
               runs/<variant>/stage<k>/refcomp-stage<k>.safetensors, via the real trainer
               (`training.train.main`) on the YAML files in configs/, in `stage_jobs` parallel
               single-thread lanes (lanes.py):
               main (α from stage 1), alpha2 (α from stage 2), frozen (every α = 0.5;
               shares alpha2's stage 1, where α is untrained and so exactly 0.5), noroute (the
               plan as written: no routing prior, stages 1-2)
  eval      -> results.json, one entry per row, then bench/TOY.md
  bundle    -> refcomp/toy/weights/ (fp16 parts + the main stage-3 adapter), with --bundle
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from refcomp_core import RefCompError

from .pretrain import LoopConfig, pretrain_backbone, pretrain_encoder
from .parts import ADAPTER_FILE, FILES, load_parts, new_parts, save_parts

log = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS: dict[str, dict] = {
    "main": {"alpha_from_stage": 1, "manifest": "manifest.jsonl", "stages": (1, 2, 3)},
    "alpha2": {"alpha_from_stage": 2, "manifest": "manifest.jsonl", "stages": (1, 2, 3)},
    "frozen": {"alpha_from_stage": 2, "manifest": "manifest_alpha05.jsonl", "stages": (2, 3),
               "stage1_from": "alpha2"},
    # the plan exactly as written: α learns only through the image (no routing prior); stages 1-2
    # only, to stay in the time budget (stage 3 trains the FG-only bridge, idle once α has collapsed)
    "noroute": {"alpha_from_stage": 1, "manifest": "manifest.jsonl", "stages": (1, 2),
                "loss": {"route_weight": 0.0}},
}


class ToyPipelineError(RefCompError):
    """A toy pipeline step cannot run (the message says which and how to fix it)."""


@dataclass(frozen=True)
class ReproduceConfig:
    run_dir: str = "runs/toy"
    report: str = "bench/TOY.md"
    # Sized to finish in under 90 minutes on 2 CPU cores (measured 2026-11-29: ~0.8 s per
    # backbone step at batch 32 on 2 threads; ~2.7 s per stage step at batch 16 on 1 thread, two
    # stage trainings side by side; every row's time is in bench/TOY.md). The backbone gets most
    # of the budget because every row stands on it.
    encoder: LoopConfig = LoopConfig(steps=150, batch_size=64, learning_rate=2e-3, warmup=20, save_every=50)
    backbone: LoopConfig = LoopConfig(steps=2000, batch_size=32, learning_rate=6e-4, warmup=100, save_every=100)
    train_scenes: int = 3000
    stage_steps: tuple[int, int, int] = (120, 160, 50)
    stage_batch: int = 16
    stage_jobs: int = 2              # stage trainings side by side, one torch thread each (lanes.py)
    eval_count: int = 64
    eval_steps: int = 20
    cfg_scale: float = 3.0
    variants: tuple[str, ...] = tuple(VARIANTS)
    trainer_overrides: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def smoke(cls, run_dir: str, report: str) -> "ReproduceConfig":
        """CI-sized: a few steps of everything."""
        tiny = LoopConfig(steps=2, batch_size=4, learning_rate=1e-3, warmup=1, save_every=1)
        return cls(run_dir=run_dir, report=report, encoder=tiny, backbone=tiny, train_scenes=8,
                   stage_steps=(2, 2, 2), stage_batch=2, eval_count=4, eval_steps=2, variants=("main", "noroute"),
                   trainer_overrides=("checkpoint_every=1", "log_every=1", "warmup_steps=0", "loss.aux_every=1"))

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or ("frozen" in self.variants and "alpha2" not in self.variants):
            raise ValueError(f"ReproduceConfig.variants {list(self.variants)}: choose from {list(VARIANTS)}; "
                             "'frozen' starts from 'alpha2' stage 1, so it needs 'alpha2'")
        if self.stage_jobs < 1:
            raise ValueError(f"ReproduceConfig.stage_jobs is {self.stage_jobs}; use 1 (serial) or more")


def step_encoders(cfg: ReproduceConfig, parts_dir: str) -> None:
    if all(os.path.isfile(os.path.join(parts_dir, FILES[k])) for k in ("text", "clip", "dino")):
        return
    os.makedirs(parts_dir, exist_ok=True)
    parts = new_parts()
    for enc in (parts.clip, parts.dino):
        pretrain_encoder(enc, cfg.encoder, parts_dir)
    save_parts(parts_dir, parts, which=("text", "clip", "dino"))


def step_backbone(cfg: ReproduceConfig, parts_dir: str) -> None:
    if os.path.isfile(os.path.join(parts_dir, FILES["backbone"])):
        return
    parts = new_parts()
    pretrain_backbone(_with_encoders(parts, parts_dir), cfg.backbone, parts_dir)
    save_parts(parts_dir, parts, which=("backbone",))


def _with_encoders(parts, parts_dir: str):
    from .parts import read_module
    tensors, _, _ = read_module(os.path.join(parts_dir, FILES["text"]))
    parts.text.load_state_dict(tensors)
    return parts


def step_data(cfg: ReproduceConfig, data_dir: str) -> None:
    from .data import write_manifest
    manifest = write_manifest(data_dir, "train", cfg.train_scenes)
    frozen = os.path.join(data_dir, "manifest_alpha05.jsonl")
    if not os.path.isfile(frozen):
        with open(manifest, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        for line in lines:
            for inst in line["instances"]:
                inst["alpha"] = 0.5
        with open(f"{frozen}.tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(line) for line in lines) + "\n")
        os.replace(f"{frozen}.tmp", frozen)


def check_trainer() -> None:
    """The trainer must accept the toy model provider (models.provider / models.toy_weights)."""
    from training.config import ModelPaths
    names = {f.name for f in dataclasses.fields(ModelPaths)}
    if not {"provider", "toy_weights"} <= names:
        raise ToyPipelineError("the trainer has no toy model provider yet: training.config.ModelPaths needs "
                               "`provider` and `toy_weights` and training.models.load_frozen must call "
                               "refcomp.toy.parts.load_parts for provider 'toy' (see refcomp/toy/parts.py)")


def stage_path(run_dir: str, variant: str, stage: int) -> str:
    return os.path.join(run_dir, "runs", variant, f"stage{stage}", f"refcomp-stage{stage}.safetensors")


def write_stage_config(cfg: ReproduceConfig, variant: str, stage: int) -> str:
    import yaml
    spec = VARIANTS[variant]
    with open(os.path.join(HERE, "configs", f"stage{stage}.yaml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    folder = os.path.join(os.path.abspath(cfg.run_dir), "runs", variant)
    doc["output_dir"] = os.path.join(folder, f"stage{stage}")
    doc["alpha_from_stage"] = spec["alpha_from_stage"]
    doc["loss"].update(spec.get("loss", {}))
    doc["models"]["toy_weights"] = os.path.join(os.path.abspath(cfg.run_dir), "parts")
    doc["data"]["manifest"] = os.path.join(os.path.abspath(cfg.run_dir), "data", "train", spec["manifest"])
    doc["data"]["batch_size"] = cfg.stage_batch
    doc["data"]["cache_dir"] = os.path.join(os.path.abspath(cfg.run_dir), "data", "cache")   # shared by every run
    doc["max_steps"] = cfg.stage_steps[stage - 1]
    if stage > 1:
        source = spec.get("stage1_from", variant) if stage == 2 else variant
        doc["init_from"] = os.path.abspath(stage_path(cfg.run_dir, source, stage - 1))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"stage{stage}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def train_variants(cfg: ReproduceConfig, variants: list[str]) -> None:
    """Train the missing stages of `variants`, in order, with the real trainer."""
    from training.train import main as train_main
    for variant in variants:
        for stage in VARIANTS[variant]["stages"]:
            if os.path.isfile(stage_path(cfg.run_dir, variant, stage)):
                continue
            path = write_stage_config(cfg, variant, stage)
            overrides = [x for o in cfg.trainer_overrides for x in ("--set", o)]
            log.info("toy: training %s stage %d (%s)", variant, stage, path)
            if train_main(["--config", path, "--resume", "latest", *overrides]) != 0:
                raise ToyPipelineError(f"toy: training {variant} stage {stage} failed; see the log above")


def step_stages(cfg: ReproduceConfig) -> None:
    """Cache the frozen-encoder features once, then train every variant (in `stage_jobs` lanes)."""
    from functools import partial

    from training.train import main as train_main

    from .lanes import plan_lanes, run_lanes
    todo = [v for v in cfg.variants if not all(os.path.isfile(stage_path(cfg.run_dir, v, k))
                                               for k in VARIANTS[v]["stages"])]
    if not todo:
        return
    check_trainer()
    if train_main(["--config", write_stage_config(cfg, todo[0], VARIANTS[todo[0]]["stages"][0]),
                   "--precompute-only"]) != 0:
        raise ToyPipelineError("toy: caching the frozen-encoder features failed; see the log above")
    lanes = plan_lanes(tuple(todo), VARIANTS, cfg.stage_steps, cfg.stage_jobs)
    try:
        run_lanes(lanes, partial(train_variants, cfg))
    except RuntimeError as err:
        raise ToyPipelineError(f"toy: stage training failed: {err}") from err


def step_bundle(cfg: ReproduceConfig, target: str, limit_mb: float = 20.0) -> None:
    """fp16 frozen parts + the main stage-3 adapter into `target` (safetensors only)."""
    parts = load_parts(os.path.join(cfg.run_dir, "parts"))
    os.makedirs(target, exist_ok=True)
    save_parts(target, parts, dtype=torch.float16)
    shutil.copyfile(stage_path(cfg.run_dir, "main", 3), os.path.join(target, ADAPTER_FILE))
    total = sum(os.path.getsize(os.path.join(target, f)) for f in os.listdir(target)) / 2 ** 20
    if total > limit_mb:
        raise ToyPipelineError(f"bundled toy weights are {total:.1f} MB, over the {limit_mb} MB budget; "
                               "shrink the backbone (ToyBackboneConfig) or the adapter ranks")
    log.info("bundled toy weights: %.1f MB in %s", total, target)


def reproduce(cfg: ReproduceConfig, *, bundle_to: str | None = None) -> dict:
    """Run every missing step; returns the results dict (also in run_dir/results.json)."""
    from .evaluation_steps import step_eval
    timings: dict[str, float] = {}
    parts_dir = os.path.join(cfg.run_dir, "parts")
    for name, fn in (("encoders", lambda: step_encoders(cfg, parts_dir)),
                     ("backbone", lambda: step_backbone(cfg, parts_dir)),
                     ("data", lambda: step_data(cfg, os.path.join(cfg.run_dir, "data", "train"))),
                     ("stages", lambda: step_stages(cfg))):
        start = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - start, 1)
        log.info("toy step %s: %.1f s", name, timings[name])
    results = step_eval(cfg, timings)
    if bundle_to:
        step_bundle(cfg, bundle_to)
    return results
