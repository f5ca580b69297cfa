"""bench/TOY.md, written only from a results JSON that `refcomp toy reproduce` measured.

A row or α entry missing from the results is printed as "not run", never filled in.
"""
from __future__ import annotations

import json
import math
import os

ROWS: tuple[tuple[str, str], ...] = (
    ("captions_only", "backbone, captions only"),
    ("stage1", "RefComp after stage 1"),
    ("stage2", "RefComp after stage 2"),
    ("stage3", "RefComp after stage 3"),
    ("alpha2_stage3", "RefComp after stage 3, α trained from stage 2"),
    ("noroute_stage2", "RefComp after stage 2, no routing prior (the plan as written)"),
    ("alpha_frozen", "ablation: α frozen at 0.5 (stages 1-3)"),
    ("no_bridge", "ablation: stage 3 without the bridge"),
)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("fg_miou", "FG mIoU"), ("fg_success", "FG succ@0.5"), ("bg_miou", "BG mIoU"), ("bg_success", "BG succ@0.5"),
    ("fg_colour_acc", "FG colour"), ("fg_shape_acc", "FG shape"), ("fg_texture_acc", "FG texture"),
)
ALPHA_POINTS = ("init", "stage1", "stage2", "stage3")
MODELS = (
    "- World: 64x64 px scenes, 1-8 objects of 8 shapes x 8 colours x 4 textures (period 8 px), distinct colours "
    "per scene; references drawn alone on white at another scale and position (`refcomp/toy/world.py`).",
    "- Packing: a fixed DCT codec (VAE-shaped: each 4x4 px cell -> 16 coefficients of an opponent-colour x DCT "
    "basis) + FLUX's 2x2 packing = 8x8 tokens of 64 channels, FLUX.1's token width (`refcomp/toy/packing.py`).",
    "- Backbone: diffusers `FluxTransformer2DModel`, width 128 (4 heads x 32), 4 double + 4 single blocks, "
    "pretrained here as a caption-conditioned rectified-flow model (10 % empty captions), then frozen; sampled "
    "with true CFG.",
    "- Text encoder: random and frozen (seeded word embeddings + sinusoidal positions); never trained.",
    "- CLIP / DINOv2 stand-ins: small CNNs, briefly pretrained on attribute classification (CLIP: colour + "
    "shape; DINOv2: colour + shape + texture) from references and scene crops, then frozen.",
    "- RefComp: stages 1-3 with `refcomp train` (training/) on `refcomp/toy/configs/stage*.yaml`, through the "
    "diffusers host (`patch_flux`). The frozen encoders' features are cached once (`data.cache_dir`) and the "
    "variants train side by side in single-thread processes (`refcomp/toy/lanes.py`).",
    "- Stage 2's learning rate and length (1e-3 for 160 steps, from 3e-4 for 80) were chosen on a train-split "
    "validation set (train-generator scenes far past the training scenes), never on the held-out seed.",
)


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_head(first: str) -> list[str]:
    """Header and rule of a markdown table with the COLUMNS after a `first` column."""
    return [f"| {first} | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]


def table_row(name: str, row: dict | None) -> str:
    """One measured row under `table_head` ("not run" when missing)."""
    cells = [fmt(row.get(k)) for k, _ in COLUMNS] if row else ["not run"] + [""] * (len(COLUMNS) - 1)
    return f"| {name} | " + " | ".join(cells) + " |"


def _quarters(rows: list[dict], key: str) -> str:
    """Means of `key` over four consecutive quarters of `rows`, joined by arrows."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "–"
    n = len(vals)
    parts = [vals[i * n // 4:max(i * n // 4 + 1, (i + 1) * n // 4)] for i in range(4)]
    return " → ".join(f"{sum(p) / len(p):.3f}" for p in parts if p)


def _delta(rows: dict, new: str, old: str, key: str) -> float | None:
    a, b = rows.get(new, {}).get(key), rows.get(old, {}).get(key)
    return None if a is None or b is None else a - b


def _check(label: str, deltas: list[tuple[str, float | None]], holds: bool | str | None) -> str:
    shown = ", ".join(f"{name} {d:+.3f}" for name, d in deltas if d is not None) or "not run"
    verdict = "not run" if holds is None else holds if isinstance(holds, str) else \
        ("holds" if holds else "**does not hold**")
    return f"| {label} | {shown} | {verdict} |"


def _net(deltas: list[tuple[str, float | None]], margin: float = 0.03) -> bool | str | None:
    """Verdict on the summed differences: holds above +margin, fails below -margin, else a tie."""
    if any(d is None for _, d in deltas):
        return None
    total = sum(d for _, d in deltas if d is not None)
    return True if total > margin else False if total < -margin else f"within noise (net {total:+.3f})"


def _every(deltas: list[tuple[str, float | None]], above: float) -> bool | None:
    """Verdict when every difference must exceed `above`."""
    return None if any(d is None for _, d in deltas) else all(d > above for _, d in deltas if d is not None)


GROUNDING = ("fg_miou", "bg_miou")
IDENTITY = ("fg_colour_acc", "fg_shape_acc", "fg_texture_acc")
OVERALL = ("fg_miou", "bg_miou", "fg_colour_acc", "fg_shape_acc")


def story(results: dict) -> list[str]:
    """The plan's claims, each checked against the measured rows (deltas in absolute units)."""
    rows, alpha = results.get("rows", {}), results.get("alpha", {})
    label = dict(COLUMNS)
    lines = ["", "## The plan's story, checked", "",
             "Each line compares two measured rows above (or α points below). A claim on several columns holds "
             "when their differences sum to more than +0.03 and fails below -0.03; differences under about 0.03 "
             "are within the noise of "
             f"{results.get('meta', {}).get('eval_count', '?')} layouts.", "",
             "| claim | measured differences | verdict |", "|---|---|---|"]

    def diffs(new: str, old: str, keys: tuple[str, ...]) -> list[tuple[str, float | None]]:
        return [(label[k], _delta(rows, new, old, k)) for k in keys]

    checks = (
        ("stage 1 gives layout (vs captions only)", diffs("stage1", "captions_only", GROUNDING),
         lambda ds: _every(ds, 0.03)),
        ("stage 2 adds identity (vs stage 1)", diffs("stage2", "stage1", IDENTITY), _net),
        ("... without breaking layout (drop under 0.03)", diffs("stage2", "stage1", GROUNDING),
         lambda ds: _every(ds, -0.03)),
        ("the bridge helps (stage 3 vs the same adapter without it)",
         diffs("stage3", "no_bridge", ("fg_miou",) + IDENTITY), _net),
        ("a learned α beats α frozen at 0.5", diffs("stage3", "alpha_frozen", OVERALL), _net),
        ("training α from stage 1 (the default) beats from stage 2", diffs("stage3", "alpha2_stage3", OVERALL),
         _net),
    )
    lines += [_check(name, ds, verdict(ds)) for name, ds, verdict in checks]
    for run, name in (("from_stage1", "α settles by depth after stage 1 (routed-FG share, fg minus mg/bg labels)"),
                      ("noroute", "... without the routing prior (the plan as written)")):
        point = alpha.get(run, {}).get("stage1")
        if point:
            gap = point["fg_routed_fg"] - point["bg_routed_fg"]
            lines.append(f"| {name} | {gap:+.3f} | {'holds' if gap > 0.5 else '**does not hold**'} |")
    ds = diffs("stage2", "noroute_stage2", OVERALL)
    lines.append(_check("the routing prior improves the image (stage 2 with vs without it)", ds, _net(ds)))
    return lines


def render(results: dict) -> str:
    meta = results.get("meta", {})
    lines = ["# RefComp toy world: measured results", "",
             "Regenerate with `refcomp toy reproduce --bundle` (writes this file and refcomp/toy/weights/; steps "
             "already done under --run-dir are skipped, so rerun to resume).",
             "Every number below was measured by that command on the held-out `eval` split "
             f"({meta.get('eval_count', '?')} layouts, never used for training or tuning).", "",
             *([] if results.get("rows") else ["**No measurement yet**: every cell below says \"not run\". Run "
                                               "`refcomp toy reproduce` to fill them.", ""]),
             "Rows \"RefComp after stage k\" are the main runs: α trained from stage 1 with the routing prior "
             "(`loss.route_weight` 0.1, docs/training.md); the bundled adapter is the main stage 3.", "",
             "Grounding: each instance's object is found by its colour (colours are distinct within a scene); "
             "IoU of its bounding box with the layout box. FG = instances labelled `fg`, BG = `mg` + `bg`. "
             "Identity (FG only): colour class, stretched-silhouette shape and texture of the blob best matching "
             "the box, against the reference's truth.", "",
             *table_head("row")]
    rows = results.get("rows", {})
    lines += [table_row(label, rows.get(key)) for key, label in ROWS]
    truth, coded = rows.get("ground_truth"), rows.get("codec_truth")
    if truth:
        lines += ["", "Evaluator ceiling (the generator's own renders of the same layouts): "
                  + ", ".join(f"{c} {fmt(truth.get(k))}" for k, c in COLUMNS) + "."]
    if coded:
        lines += ["", "Codec ceiling (those renders encoded and decoded by the toy codec, the best a backbone can "
                  "output): " + ", ".join(f"{c} {fmt(coded.get(k))}" for k, c in COLUMNS) + "."]
    lines += story(results)
    lines += ["", "## α by depth label (held-out layouts)", "",
              "Mean α (fraction routed FG, α ≥ 0.5) for instances labelled `fg` vs `mg`/`bg`.", "",
              "| α trained from | point | FG-labelled α | BG-labelled α |", "|---|---|---|---|"]
    for run, label in (("from_stage1", "stage 1, routing prior"),
                       ("from_stage2", "stage 2, routing prior"),
                       ("noroute", "stage 1, no routing prior (the plan; trainer default)")):
        points = results.get("alpha", {}).get(run, {})
        for point in ALPHA_POINTS:
            a = points.get(point)
            cells = (f"{fmt(a.get('fg_mean'))} ({fmt(a.get('fg_routed_fg'))})",
                     f"{fmt(a.get('bg_mean'))} ({fmt(a.get('bg_routed_fg'))})") if a else ("not run", "")
            lines.append(f"| {label} | {point} | {cells[0]} | {cells[1]} |")
    steps = results.get("alpha_steps")
    if steps:
        lines += ["", "### α during training", "",
                  "Means over the training batches (the trainer's losses.jsonl), each cell the mean of one quarter "
                  "of the stage's steps, first → last; \"skipped\" counts updates skipped because no instance "
                  "in the batch was routed FG, so the loss had no grad path.", "",
                  "| run / stage | steps | FG-labelled α | BG-labelled α | skipped |", "|---|---|---|---|---|"]
        for key, logged in steps.items():
            fg, bg = _quarters(logged, "alpha_fg_mean"), _quarters(logged, "alpha_bg_mean")
            skipped = sum(int(r.get("nograd_skipped", 0)) for r in logged)
            lines.append(f"| {key} | {len(logged)} | {fg} | {bg} | {skipped} |")
    timings = meta.get("timings_s", {})
    if timings:
        order = ["encoders", "backbone", "data", "stages", "eval"]
        parts = ", ".join(f"{k} {timings[k] / 60:.1f}" for k in sorted(timings, key=lambda k: (
            order.index(k) if k in order else len(order), k)))
        lines += ["", f"Wall time of the measured run: {sum(timings.values()) / 60:.1f} min ({parts} min)."]
    lines += ["", "## Models", "", *MODELS, "", "## Setup", ""]
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else fmt(v)}"
              for k, v in sorted(meta.items())]
    return "\n".join(lines) + "\n"


def write(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(results))
