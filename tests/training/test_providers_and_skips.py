"""Model providers (models.provider: diffusers | toy), the token grid each implies, α means
in losses.jsonl, and steps whose loss has no grad path (skipped and counted, never a crash;
under DDP every rank still runs the same backward)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from training.config import PATH_KEYS, ModelPaths, load_config
from training.train import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_provider_is_checked_and_toy_weights_is_a_path():
    assert ModelPaths().provider == "diffusers"
    with pytest.raises(ValueError, match="models.provider"):
        ModelPaths(provider="comfy")
    with pytest.raises(ValueError, match="models.toy_weights"):
        ModelPaths(provider="toy")
    assert "models.toy_weights" in PATH_KEYS and "models.provider" not in PATH_KEYS
    cfg = load_config(os.path.join(REPO, "refcomp", "toy", "configs", "stage1.yaml"))
    assert cfg.models.provider == "toy"                                   # not resolved as a path
    assert cfg.models.toy_weights == os.path.join(REPO, "refcomp", "toy", "parts")


def test_toy_provider_loads_parts_with_eight_pixels_per_token(tmp_path):
    from refcomp.toy.backbone import ToyBackboneConfig
    from refcomp.toy.data import write_manifest
    from refcomp.toy.parts import new_parts, save_parts
    from training.config import DataConfig
    from training.data import Skipped, read_manifest
    from training.encoders import Frozen
    from training.features import load_batch
    from training.models import Needs, encoder_dims, load_frozen

    assert Frozen(transformer=None).pixels_per_token == 16                # FLUX: 8x VAE, 2x2 packing
    small = ToyBackboneConfig(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                              axes_dims_rope=(4, 6, 6))
    parts = new_parts(backbone=small)
    save_parts(str(tmp_path / "parts"), parts)
    paths = ModelPaths(provider="toy", toy_weights=str(tmp_path / "parts"))
    fz = load_frozen(paths, Needs(), torch.device("cpu"), torch.float32)
    assert fz.pixels_per_token == 8 and not any(p.requires_grad for p in fz.transformer.parameters())
    assert encoder_dims(paths) == parts.encoder_dims()
    manifest = write_manifest(str(tmp_path / "data"), "train", 2)
    data = DataConfig(manifest=manifest, batch_size=2, max_text_len=40, buckets=[[64, 64]])
    samples, skipped = read_manifest(data)
    batch = load_batch(fz, samples, [0, 1], data, Skipped())
    assert batch.grid == (8, 8) and batch.latents.shape[:2] == (2, 64)    # 64 px / 8 px per token


def all_background(workdir, name: str = "bg", every: int = 1) -> str:
    """A copy of the tiny manifest (absolute paths) where every `every`-th line has all α = 0.1
    (no FG instance, so stage 3's bridge is unused on it) and the others keep their FG."""
    root = workdir / "data"
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines() if x.strip()]
    for k, line in enumerate(lines):
        line["image"] = str(root / line["image"])
        for inst in line["instances"]:
            if inst["ref"]:
                inst["ref"] = str(root / inst["ref"])
            if k % every == 0:
                inst["alpha"] = 0.1
    (workdir / name).mkdir()
    (workdir / name / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(workdir / name / "manifest.jsonl")


def stage1_then_3(workdir, manifest: str, *extra: str) -> list[str]:
    assert main(["--config", str(workdir / "config.yaml"), "--set", "output_dir=run1"]) == 0
    return ["--config", str(workdir / "config.yaml"), "--set", "stage=3", "--set", "output_dir=run3",
            "--set", "init_from=run1/refcomp-stage1.safetensors", "--set", f"data.manifest={manifest}",
            *[x for e in extra for x in ("--set", e)]]


def test_stage_three_without_fg_skips_every_update_and_logs_alpha(workdir):
    from accelerate.state import AcceleratorState
    argv = stage1_then_3(workdir, all_background(workdir), "max_steps=3")
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(argv) == 0                                                # no "does not require grad" crash
    rows = [json.loads(x) for x in (workdir / "run3" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["nograd_skipped"] == 1.0 and r["nograd_ranks"] == 1 for r in rows)
    assert rows[-1]["nograd_skipped_total"] == 3
    assert all(r["alpha_fg_mean"] == pytest.approx(0.1) and r["alpha_bg_mean"] == pytest.approx(0.1) for r in rows)
    before, after = load_file(workdir / "run1" / "refcomp-stage1.safetensors"), \
        load_file(workdir / "run3" / "refcomp-stage3.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)          # no AdamW drift on zero gradients


def test_alpha_means_are_logged_when_the_update_runs(workdir):
    assert main(["--config", str(workdir / "config.yaml"), "--set", "max_steps=1"]) == 0
    row = json.loads((workdir / "run" / "losses.jsonl").read_text().splitlines()[0])
    assert row["nograd_skipped"] == 0.0 and 0.0 < row["alpha_fg_mean"] < 1.0 and 0.0 < row["alpha_bg_mean"] < 1.0


@pytest.mark.integration
def test_ddp_ranks_agree_when_only_one_rank_has_a_grad_path(workdir):
    from test_resume_ddp import env, free_port
    argv = stage1_then_3(workdir, all_background(workdir, every=2), "max_steps=4", "data.batch_size=1",
                         "data.buckets=[[64, 64]]")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "training.train", *argv]
    run = subprocess.run(cmd, cwd=REPO, env={**env(), "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                         text=True, timeout=240)
    (workdir / "ddp.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"see {workdir / 'ddp.log'}: " + run.stderr[-3000:]
    rows = [json.loads(x) for x in (workdir / "run3" / "losses.jsonl").read_text().splitlines()]
    assert 1 in {r["nograd_ranks"] for r in rows}, rows                    # the case under test happened
    sums = {line.split("(rank ")[1].split(" ")[0]: line.rsplit(" ", 1)[1]
            for line in (run.stdout + run.stderr).splitlines() if "adapter weights checksum (rank" in line}
    assert set(sums) == {"0", "1"} and len(set(sums.values())) == 1, sums
    before, after = load_file(workdir / "run1" / "refcomp-stage1.safetensors"), \
        load_file(workdir / "run3" / "refcomp-stage3.safetensors")
    assert {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])} == {"bridge"}
