"""The evaluation step of `refcomp toy reproduce`: every row and α point, one at a time,
saved to run_dir/results.json after each (a rerun skips what is there), then bench/TOY.md."""
from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from typing import Callable

import numpy as np
import torch

from refcomp_core import RefCompAdapter

from .bench import EvalConfig, alpha_by_depth, eval_scenes, evaluate_row, no_bridge
from .evaluate import score_image, summarize
from .packing import PIXELS_PER_TOKEN, pack, unpack
from .parts import load_parts
from .report import write as write_report
from .reproduce import VARIANTS, ReproduceConfig, stage_path
from .sample import SampleConfig

log = logging.getLogger(__name__)
RESULTS = "results.json"


def _load(path: str) -> dict:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {"rows": {}, "alpha": {}, "meta": {}}


def _save(path: str, results: dict) -> None:
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(f"{path}.tmp", path)


def alpha_steps(run_dir: str) -> dict:
    """Per-step α means from the trainer's losses.jsonl, when it logs them (alpha_fg_mean / alpha_bg_mean)."""
    out: dict = {}
    for variant in ("main", "alpha2", "noroute"):
        for stage in (1, 2, 3):
            path = os.path.join(run_dir, "runs", variant, f"stage{stage}", "losses.jsonl")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            keep = [{k: r[k] for k in ("step", "alpha_fg_mean", "alpha_bg_mean", "nograd_skipped") if k in r}
                    for r in rows]
            if any(len(r) > 1 for r in keep):
                out[f"{variant}/stage{stage}"] = keep
    return out


ROW_FILES = {"stage1": ("main", 1), "stage2": ("main", 2), "stage3": ("main", 3), "no_bridge": ("main", 3),
             "alpha_frozen": ("frozen", 3), "alpha2_stage3": ("alpha2", 3), "noroute_stage2": ("noroute", 2)}
ROW_OPTIONS = {"no_bridge": {"edit": no_bridge}, "alpha_frozen": {"alpha": 0.5}}     # how a row differs from its file


def through_codec(img: np.ndarray) -> np.ndarray:
    """A render encoded and decoded by the toy codec: the best any backbone can output.
    (H, W, 3) -> (H, W, 3) in [0, 1]"""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    grid = (img.shape[0] // PIXELS_PER_TOKEN, img.shape[1] // PIXELS_PER_TOKEN)
    return unpack(pack(x), grid)[0].permute(1, 2, 0).numpy()


def ran(timings: dict[str, float]) -> dict[str, float]:
    """Timings of the steps that did work this call: a step that found its outputs returns
    in well under a second, and must not overwrite the time it took when it ran."""
    return {k: v for k, v in timings.items() if v >= 1.0}


def _fingerprint(cfg: ReproduceConfig, row: str) -> str:
    """What a row was measured from: the backbone file and the row's adapter (modification times)."""
    files = [os.path.join(cfg.run_dir, "parts", "backbone.safetensors")]
    if row in ROW_FILES:
        files.append(stage_path(cfg.run_dir, *ROW_FILES[row]))
    return ";".join(f"{os.path.basename(f)}@{os.path.getmtime(f):.0f}" for f in files)


def stage_learning_rates() -> list[float]:
    """The learning rate of each toy stage config (refcomp/toy/configs/stage<k>.yaml)."""
    import yaml

    from .reproduce import HERE
    rates = []
    for k in (1, 2, 3):
        with open(os.path.join(HERE, "configs", f"stage{k}.yaml"), encoding="utf-8") as f:
            rates.append(float(yaml.safe_load(f)["learning_rate"]))
    return rates


def step_eval(cfg: ReproduceConfig, timings: dict[str, float]) -> dict:
    """Measure every missing or retrained row and α point; `timings` gains "eval" when
    anything was measured (its whole wall time, α points and loading included)."""
    start = time.perf_counter()
    measured = False
    path = os.path.join(cfg.run_dir, RESULTS)
    results = _load(path)
    parts = load_parts(os.path.join(cfg.run_dir, "parts"))
    ecfg = EvalConfig(count=cfg.eval_count, sample=SampleConfig(steps=cfg.eval_steps, cfg_scale=cfg.cfg_scale))
    scenes = eval_scenes(ecfg.count)
    rows: dict[str, Callable[[], dict]] = {
        "ground_truth": lambda: summarize([s for sc in scenes for s in score_image(sc.render(), sc.layout())]),
        "codec_truth": lambda: summarize([s for sc in scenes for s in score_image(through_codec(sc.render()),
                                                                                   sc.layout())]),
        "captions_only": lambda: evaluate_row(parts, None, ecfg, scenes=scenes, desc="captions only")[0]}

    def adapter_row(name: str) -> dict:
        variant, stage = ROW_FILES[name]
        opts = ROW_OPTIONS.get(name, {})
        adapter = opts.get("edit", lambda a: a)(parts.load_adapter(stage_path(cfg.run_dir, variant, stage)))
        return evaluate_row(parts, adapter, ecfg, alpha=opts.get("alpha"), scenes=scenes,
                            desc=name.replace("_", " "))[0]

    rows.update({name: partial(adapter_row, name) for name, (variant, _) in ROW_FILES.items()
                 if variant in cfg.variants})
    sources = {name: _fingerprint(cfg, name) for name in rows}
    for name, fn in rows.items():
        if results["rows"].get(name, {}).get("source") != sources[name]:       # new or retrained: (re)measure
            began = time.perf_counter()
            results["rows"][name] = {**fn(), "source": sources[name], "seconds": round(time.perf_counter() - began, 1)}
            measured = True
            _save(path, results)
    for variant, key in (("main", "from_stage1"), ("alpha2", "from_stage2"), ("noroute", "noroute")):
        if variant not in cfg.variants:
            continue
        points = results["alpha"].setdefault(key, {})
        for k in VARIANTS[variant]["stages"]:
            if f"stage{k}" not in points:
                points[f"stage{k}"] = alpha_by_depth(parts, parts.load_adapter(stage_path(cfg.run_dir, variant, k)),
                                                     scenes)
                measured = True
                _save(path, results)
        if "init" not in points:                     # a freshly initialised adapter of the same config
            fresh = RefCompAdapter(parts.load_adapter(stage_path(cfg.run_dir, variant, 1)).config).eval()
            points["init"] = alpha_by_depth(parts, fresh, scenes)
            measured = True
            _save(path, results)
    results["alpha_steps"] = alpha_steps(cfg.run_dir)
    if measured:
        timings = {**timings, "eval": round(time.perf_counter() - start, 1)}
    results["meta"].update({"eval_count": ecfg.count, "eval_sampling": f"{ecfg.sample.steps} Euler steps, CFG "
                            f"{ecfg.sample.cfg_scale}", "timings_s": {**results["meta"].get("timings_s", {}),
                                                                       **ran(timings)},
                            "backbone_steps": cfg.backbone.steps, "stage_steps": list(cfg.stage_steps),
                            "stage_learning_rates": stage_learning_rates(), "stage_batch": cfg.stage_batch,
                            "stage_jobs": cfg.stage_jobs,
                            "train_scenes": cfg.train_scenes, "variants": list(cfg.variants),
                            "results_file": path})
    _save(path, results)
    write_report(results, cfg.report)
    log.info("toy results: %s; report: %s", path, cfg.report)
    return results
