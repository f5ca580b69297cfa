"""`refcomp prepare-data` end to end with tiny random SAM / Depth Anything / BLIP."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from training.config import DataConfig
from training.data import read_manifest
from training.prepare_data import main


def test_prepare_data_builds_a_valid_resumable_manifest(tmp_path):
    from prep_models import tiny_blip, tiny_depth, tiny_sam

    models = {"segmenter": tiny_sam(tmp_path / "sam"), "depth": tiny_depth(tmp_path / "depth"),
              "captioner": tiny_blip(tmp_path / "blip")}
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (64, 64), "b.jpg": (48, 80), "sub/c.png": (96, 64)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    (images / "broken.png").write_bytes(b"no image here")
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--min-score", "0", "--min-area", "0",
            "--points-per-side", "3", "--device", "cpu"] + [a for k, v in models.items() for a in (f"--{k}", str(v))]
    assert main(argv) == 0

    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["image"] for x in lines] == ["../images/a.png", "../images/b.jpg", "../images/sub/c.png"]
    samples, skipped = read_manifest(DataConfig(manifest=str(out / "manifest.jsonl"), buckets=[[64, 64]]))
    assert len(samples) == 3 and skipped.total == 0                     # every line is a valid layout v1
    instances = [i for x in lines for i in x["instances"]]
    assert instances, "the grid of point prompts found no instance"
    for inst in instances:
        assert inst["depth"] in ("fg", "mg", "bg")
        crop = Image.open(out / inst["ref"])
        assert crop.mode == "RGBA"
    assert all(isinstance(x["caption"], str) for x in lines)

    # resumable: a rerun processes nothing and rewrites the same manifest
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    assert main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()} == stamps
    assert [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()] == lines
