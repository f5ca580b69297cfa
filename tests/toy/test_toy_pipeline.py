"""`refcomp toy reproduce --smoke`: every step of the pipeline end to end, a few steps each,
through the real trainer (`training.train.main`) and the real diffusers host."""
import json
import os

import pytest
import yaml

import refcomp.toy.reproduce as rp
from refcomp.toy.parts import FILES
from refcomp.toy.report import ROWS


@pytest.mark.integration
def test_reproduce_smoke_end_to_end(tmp_path):
    run, report = tmp_path / "run", tmp_path / "TOY.md"
    cfg = rp.ReproduceConfig.smoke(str(run), str(report))
    results = rp.reproduce(cfg)
    assert all((run / "parts" / f).is_file() for f in FILES.values())
    assert (run / "data" / "train" / "manifest.jsonl").is_file()
    frozen = [json.loads(x) for x in open(run / "data" / "train" / "manifest_alpha05.jsonl", encoding="utf-8")]
    assert len(frozen) == 8 and all(i["alpha"] == 0.5 for line in frozen for i in line["instances"])
    for stage in (1, 2, 3):
        assert os.path.isfile(rp.stage_path(str(run), "main", stage))
        written = yaml.safe_load(open(run / "runs" / "main" / f"stage{stage}.yaml", encoding="utf-8"))
        assert written["stage"] == stage and written["max_steps"] == 2
    for stage in (1, 2):                                             # the second lane: the no-prior variant
        assert os.path.isfile(rp.stage_path(str(run), "noroute", stage))
    cache = run / "data" / "cache"                                   # the encoders ran once, before the lanes
    assert len(list(cache.glob("*.safetensors"))) == 8
    assert written["data"]["cache_dir"] == str(cache)
    rows = results["rows"]
    for key in ("ground_truth", "captions_only", "stage1", "stage2", "stage3", "no_bridge"):
        assert 0.0 <= rows[key]["fg_colour_acc"] <= 1.0 and rows[key]["source"]
    assert rows["ground_truth"]["fg_miou"] > 0.8                     # the evaluator's ceiling on truth renders
    assert 0.8 < rows["codec_truth"]["fg_miou"] <= rows["ground_truth"]["fg_miou"]   # ... after the lossy codec
    written = yaml.safe_load(open(run / "runs" / "main" / "stage1.yaml", encoding="utf-8"))
    assert written["loss"]["route_weight"] > 0                       # the default variant uses the routing prior
    assert rp.write_stage_config(cfg, "noroute", 1) and yaml.safe_load(open(
        run / "runs" / "noroute" / "stage1.yaml", encoding="utf-8"))["loss"]["route_weight"] == 0
    assert set(results["alpha"]["from_stage1"]) == {"init", "stage1", "stage2", "stage3"}
    steps = results["alpha_steps"]                                   # the trainer logs α means per step
    assert {"main/stage1", "main/stage2", "main/stage3"} <= set(steps)
    assert all(0.0 < r["alpha_fg_mean"] < 1.0 for r in steps["main/stage1"] if "alpha_fg_mean" in r)
    text = report.read_text()
    for key, label in ROWS:
        assert label in text
    assert "not run" in text                                         # the smoke skips alpha2 and frozen
    assert results["meta"]["timings_s"]["eval"] > 0 and results["meta"]["stage_jobs"] == 2
    stamp = os.path.getmtime(rp.stage_path(str(run), "main", 3))
    eval_s = results["meta"]["timings_s"]["eval"]
    again = rp.reproduce(cfg)                                        # everything is done: nothing reruns
    assert os.path.getmtime(rp.stage_path(str(run), "main", 3)) == stamp
    assert again["meta"]["timings_s"]["eval"] == eval_s              # ... and the measured times stay
    assert again["rows"]["stage3"] == rows["stage3"]
