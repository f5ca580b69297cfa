"""The feature cache gives the same training as the online encoders; the NaN guard skips
the update and the run goes on."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import read_info
from training.train import main


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_precomputed_features_train_exactly_like_online_ones(workdir):
    cfg = str(workdir / "config.yaml")
    assert main(["--config", cfg, "--set", "data.cache_dir=cache", "--precompute-only"]) == 0
    assert len(list((workdir / "cache").glob("*.safetensors"))) == 6
    assert main(["--config", cfg, "--set", "data.cache_dir=cache", "--set", "output_dir=cached"]) == 0
    assert main(["--config", cfg, "--set", "output_dir=online"]) == 0
    cached, online = rows(workdir / "cached" / "losses.jsonl"), rows(workdir / "online" / "losses.jsonl")
    for a, b in zip(cached, online):
        for key in ("loss/flow", "loss/rpl", "loss/identity", "loss/box"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), key


def test_nonfinite_loss_skips_the_update(workdir, monkeypatch):
    import training.step as step_module

    real = step_module.L.flow_loss
    calls = {"n": 0}

    def poisoned(pred, x0, noise):
        calls["n"] += 1
        loss = real(pred, x0, noise)
        return loss * float("nan") if calls["n"] == 1 else loss

    monkeypatch.setattr(step_module.L, "flow_loss", poisoned)
    assert main(["--config", str(workdir / "config.yaml"), "--set", "output_dir=nan"]) == 0
    logged = rows(workdir / "nan" / "losses.jsonl")
    assert [r["nonfinite_skipped"] for r in logged] == [1.0, 0.0]
    first = workdir / "nan" / "checkpoints" / "checkpoint_0" / "refcomp.safetensors"
    torch.manual_seed(0)
    fresh = RefCompAdapter(read_info(first).config).state_dict()
    after_step0 = load_file(first)
    assert all(torch.equal(fresh[k], after_step0[k]) for k in fresh)          # the NaN step changed nothing
    final = load_file(workdir / "nan" / "refcomp-stage1.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in final.values())
    assert any(not torch.equal(fresh[k], final[k]) for k in fresh)            # the next step trained
