"""`refcomp toy reproduce --smoke`: every step of the pipeline end to end, a few steps each,
through the real trainer (`training.train.main`) and the real diffusers host."""
import dataclasses
import json
import os

import pytest
import yaml

import refcomp.toy.reproduce as rp
from refcomp.toy.parts import FILES, encoder_dims_of, load_parts
from refcomp.toy.report import ROWS


def _provide_toy_hooks_if_missing(monkeypatch):
    """Until training/ has its toy model provider (models.provider / models.toy_weights,
    Frozen.pixels_per_token), emulate exactly those hooks around the unchanged trainer."""
    import training.config as tc
    if {"provider", "toy_weights"} <= {f.name for f in dataclasses.fields(tc.ModelPaths)}:
        return
    import training.features as tf
    import training.loop as tl
    import training.models as tm
    import training.validation as tv
    from training.encoders import Frozen
    weights = {}
    original_write = rp.write_stage_config

    def write_stage_config(cfg, variant, stage):
        path = original_write(cfg, variant, stage)
        doc = yaml.safe_load(open(path, encoding="utf-8"))
        weights["dir"] = doc["models"].pop("toy_weights")
        assert doc["models"].pop("provider") == "toy"
        yaml.safe_dump(doc, open(path, "w", encoding="utf-8"))
        return path

    def load_batch(*args, **kwargs):
        batch = tf.load_batch(*args, **kwargs)
        side = int(round(batch.latents.shape[1] ** 0.5))          # toy images are square: 8 px per token
        batch.grid = (side, side)
        return batch

    monkeypatch.setattr(rp, "check_trainer", lambda: None)
    monkeypatch.setattr(rp, "write_stage_config", write_stage_config)
    monkeypatch.setattr(tl, "load_frozen", lambda paths, needs, device, dtype: Frozen(
        **load_parts(weights["dir"], device, dtype).frozen_kwargs()))
    monkeypatch.setattr(tm, "encoder_dims", lambda paths: encoder_dims_of(weights["dir"]))
    monkeypatch.setattr(tl, "load_batch", load_batch)
    monkeypatch.setattr(tv, "load_batch", load_batch)


@pytest.mark.integration
def test_reproduce_smoke_end_to_end(tmp_path, monkeypatch):
    _provide_toy_hooks_if_missing(monkeypatch)
    run, report = tmp_path / "run", tmp_path / "TOY.md"
    cfg = rp.ReproduceConfig.smoke(str(run), str(report))
    # A learning rate this small keeps every α at exactly 0.5 (FG), so stage 3's bridge has a
    # gradient after 2 steps: the trainer crashes on a batch without FG instances in stage 3.
    cfg = dataclasses.replace(cfg, trainer_overrides=(*cfg.trainer_overrides, "learning_rate=1.0e-12"))
    results = rp.reproduce(cfg)
    assert all((run / "parts" / f).is_file() for f in FILES.values())
    assert (run / "data" / "train" / "manifest.jsonl").is_file()
    frozen = [json.loads(x) for x in open(run / "data" / "train" / "manifest_alpha05.jsonl", encoding="utf-8")]
    assert len(frozen) == 8 and all(i["alpha"] == 0.5 for line in frozen for i in line["instances"])
    for stage in (1, 2, 3):
        assert os.path.isfile(rp.stage_path(str(run), "main", stage))
        written = yaml.safe_load(open(run / "runs" / "main" / f"stage{stage}.yaml", encoding="utf-8"))
        assert written["stage"] == stage and written["max_steps"] == 2
    rows = results["rows"]
    for key in ("ground_truth", "captions_only", "stage1", "stage2", "stage3", "no_bridge"):
        assert 0.0 <= rows[key]["fg_colour_acc"] <= 1.0 and rows[key]["source"]
    assert rows["ground_truth"]["fg_miou"] > 0.8                     # the evaluator's ceiling on truth renders
    assert set(results["alpha"]["from_stage1"]) == {"init", "stage1", "stage2", "stage3"}
    text = report.read_text()
    for key, label in ROWS:
        assert label in text
    assert "not run" in text                                         # the smoke skips the α variants
    stamp = os.path.getmtime(rp.stage_path(str(run), "main", 3))
    again = rp.reproduce(cfg)                                        # everything is done: nothing reruns
    assert os.path.getmtime(rp.stage_path(str(run), "main", 3)) == stamp
    assert again["rows"]["stage3"] == rows["stage3"]
