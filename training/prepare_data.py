"""`refcomp prepare-data`: plain images -> a training manifest (DESIGN §6).

For each image: instance masks and boxes (SAM over a grid of point prompts), RGBA
ref crops, fg/mg/bg depth labels (Depth Anything, per-image quantiles), instance
captions and a global caption (an image-to-text model). Every model is loaded from
a local folder through transformers.

Resumable: each finished image writes OUT/records/<name>.json; a rerun skips those
images and rebuilds OUT/manifest.jsonl from all records. Unreadable images are
skipped, counted and logged.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refcomp prepare-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder: manifest.jsonl, crops/, records/")
    p.add_argument("--segmenter", required=True, help="local SAM folder (transformers SamModel)")
    p.add_argument("--depth", required=True, help="local Depth Anything folder (AutoModelForDepthEstimation)")
    p.add_argument("--captioner", required=True, help="local image-to-text folder (e.g. BLIP)")
    p.add_argument("--points-per-side", type=int, default=8, help="SAM point-prompt grid (n x n)")
    p.add_argument("--min-score", type=float, default=0.8, help="minimum SAM predicted IoU of a mask")
    p.add_argument("--min-area", type=float, default=0.01, help="minimum mask area (fraction of the image)")
    p.add_argument("--max-instances", type=int, default=20)
    p.add_argument("--depth-is-distance", action="store_true",
                   help="the depth model predicts distance (larger = farther) instead of Depth Anything's disparity")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return p


def find_images(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--images: folder {root!r} does not exist")
    found = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files
             if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def record_name(root: str, path: str) -> str:
    """A flat, unique name for an image (its path under --images)."""
    rel = os.path.splitext(os.path.relpath(path, root))[0]
    return rel.replace(os.sep, "__").replace(" ", "_")


def process(path: str, name: str, out: str, models: dict) -> dict:
    """One image -> one manifest line (crops written under out/crops)."""
    from PIL import Image

    from .prep import cutout, mask_box, on_white

    with Image.open(path) as im:
        image = im.convert("RGB")
    masks = models["segment"](image)
    depths = models["depth"](image, masks) if masks else []
    crops = [cutout(image, m, mask_box(m)) for m in masks]
    captions = models["caption"]([image] + [on_white(c) for c in crops])
    instances = []
    for k, (mask, crop) in enumerate(zip(masks, crops)):
        rel = os.path.join("crops", f"{name}_{k}.png")
        crop.save(os.path.join(out, rel))
        instances.append({"box": [float(v) for v in mask_box(mask)], "ref": rel,
                          "caption": captions[k + 1] or None, "depth": depths[k], "alpha": None})
    w, h = image.size
    return {"image": os.path.relpath(path, out), "caption": captions[0], "width": w, "height": h,
            "instances": instances}


def write_manifest(out: str) -> int:
    records = sorted(f for f in os.listdir(os.path.join(out, "records")) if f.endswith(".json"))
    with open(os.path.join(out, "manifest.jsonl.tmp"), "w", encoding="utf-8") as f:
        for name in records:
            with open(os.path.join(out, "records", name), encoding="utf-8") as r:
                f.write(json.dumps(json.load(r)) + "\n")
    os.replace(os.path.join(out, "manifest.jsonl.tmp"), os.path.join(out, "manifest.jsonl"))
    return len(records)


def main(argv: list[str] | None = None) -> int:
    import torch
    from tqdm.auto import tqdm

    from .prep import Captioner, DepthLabeller, SegmentOptions, Segmenter

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = find_images(args.images)
    for sub in ("crops", "records"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    names = {p: record_name(args.images, p) for p in images}
    todo = [p for p in images if not os.path.isfile(os.path.join(args.out, "records", names[p] + ".json"))]
    log.info("prepare-data: %d images, %d already done", len(images), len(images) - len(todo))
    options = SegmentOptions(points_per_side=args.points_per_side, min_score=args.min_score, min_area=args.min_area,
                             max_instances=args.max_instances)
    models = {"segment": Segmenter(args.segmenter, device, options),
              "depth": DepthLabeller(args.depth, device, larger_is_nearer=not args.depth_is_distance),
              "caption": Captioner(args.captioner, device)} if todo else {}
    bad = 0
    for path in tqdm(todo, desc="prepare-data"):
        try:
            line = process(path, names[path], args.out, models)
        except (OSError, ValueError, SyntaxError) as err:
            bad += 1
            log.warning("skipping unreadable image %s: %s", path, err)
            continue
        tmp = os.path.join(args.out, "records", names[path] + ".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(line, f)
        os.replace(tmp, tmp[:-4])
    count = write_manifest(args.out)
    log.info("prepare-data: manifest with %d images (%d unreadable skipped) at %s", count, bad,
             os.path.join(args.out, "manifest.jsonl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
