"""`refcomp toy validate`: score adapters on the validation layouts, to choose settings.

The held-out `eval` split is for bench/TOY.md only; settings such as stage 2's learning rate
and length were chosen with this command instead, on train-split layouts that no run trains on
(`bench.validation_scenes`). Prints one markdown row per adapter (the TOY.md columns).
"""
from __future__ import annotations

import os

from .bench import VALIDATION_START, EvalConfig, evaluate_row, validation_scenes
from .parts import load_parts
from .report import table_head, table_row
from .sample import SampleConfig


def validate(parts_dir: str, adapters: list[str], *, count: int = 48, steps: int = 20,
             cfg_scale: float = 3.0, alpha: float | None = None) -> str:
    """-> a markdown table: captions only, then each adapter file, on `count` validation layouts.
    `alpha` holds every instance's α at that value (how the frozen-α ablation is sampled)."""
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"refcomp toy validate: --alpha must be in [0, 1], got {alpha}")
    for path in [parts_dir, *adapters]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"refcomp toy validate: {path} does not exist; give a run's parts folder "
                                    "(--parts) and exported refcomp-stage<k>.safetensors files (--adapter)")
    parts = load_parts(parts_dir)
    ecfg = EvalConfig(count=count, sample=SampleConfig(steps=steps, cfg_scale=cfg_scale))
    scenes = validation_scenes(count)
    rows = [("captions only", evaluate_row(parts, None, ecfg, scenes=scenes, desc="captions only")[0])]
    for path in adapters:
        rows.append((path, evaluate_row(parts, parts.load_adapter(path), ecfg, alpha=alpha, scenes=scenes,
                                        desc=os.path.basename(path))[0]))
    lines = [f"Validation layouts: {count} (train split from scene {VALIDATION_START:,}, never trained on), "
             f"{steps} Euler steps, CFG {cfg_scale}" + (f", every α held at {alpha}" if alpha is not None else ""), "",
             *table_head("adapter")]
    lines += [table_row(name, row) for name, row in rows]
    return "\n".join(lines) + "\n"
