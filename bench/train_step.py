"""Benchmark: one training step with and without precomputed encoder features.

Builds a small-but-not-trivial random model set (FLUX D=256 with 4 double + 8 single
blocks, 256 px images = 256 image tokens, 4-layer T5/CLIP/DINOv2, a 4-level VAE) and a
generated 8-scene manifest, then runs the stage-1 trainer twice in separate processes
(so peak memory is per variant): encoders online vs features cached by `precompute`.
It reports the median step time and peak memory of each, and their ratios. Nothing here
fails on time.

    python bench/train_step.py                 # ~1-2 min on 2 CPU cores
    python bench/train_step.py --steps 10 --device cuda

The tokenizers (and the tiny dataset generator) come from the test fixtures
(tests/compose_fixtures.py, tests/training/dataset.py); every model is rebuilt larger here.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def build(root: Path) -> None:
    """Random models (bigger than the test ones) and an 8-scene 256 px dataset."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "training")]
    import torch
    from compose_fixtures import build_tiny_models
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection,
                              Dinov2Config, Dinov2Model, T5Config, T5EncoderModel)

    tiny = build_tiny_models(root / "models")
    flux = tiny.flux
    vocab_t5 = T5EncoderModel.from_pretrained(flux / "text_encoder_2").config.vocab_size
    old_clip = CLIPTextModel.from_pretrained(flux / "text_encoder").config
    tokens = {k: getattr(old_clip, k) for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=vocab_t5, d_model=256, d_kv=64, d_ff=512, num_layers=4, num_heads=4)) \
        .save_pretrained(flux / "text_encoder_2")
    CLIPTextModel(CLIPTextConfig(**tokens, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                 num_attention_heads=4, max_position_embeddings=16)).save_pretrained(flux / "text_encoder")
    FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
                           num_attention_heads=4, joint_attention_dim=256, pooled_projection_dim=128,
                           guidance_embeds=True, axes_dims_rope=(8, 28, 28)).save_pretrained(flux / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64, 64, 64),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  layers_per_block=1, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                  use_quant_conv=False, use_post_quant_conv=False).save_pretrained(flux / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=192, intermediate_size=384, num_hidden_layers=4,
                                                   num_attention_heads=4, image_size=112, patch_size=14,
                                                   projection_dim=128)).save_pretrained(tiny.clip)
    Dinov2Model(Dinov2Config(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2,
                             image_size=112, patch_size=14)).save_pretrained(tiny.dino)
    scenes(root / "data")


def scenes(root: Path) -> None:
    """8 scenes of 256 px with 3 boxes each (the test generator, scaled up)."""
    import dataset
    dataset.SIZES = [(256, 256)] * 8
    dataset.make_dataset(root)


def config(root: Path, cached: bool, steps: int) -> list[str]:
    sets = {"output_dir": str(root / ("run_cached" if cached else "run_online")), "max_steps": steps,
            "checkpoint_every": 10_000, "data.buckets": "[[256, 256]]", "data.max_text_len": 64,
            "data.batch_size": 2, "loss.aux_every": 4, "learning_rate": 1e-4,
            "adapter": "{alpha_hidden: 64, dense_k: 4, fourier_freqs: 8, modulation_rank: 16, bridge_rank: 8, "
                       "lora_rank: 16}"}
    if cached:
        sets["data.cache_dir"] = str(root / "cache")
    shutil.copy(REPO / "training" / "configs" / "tiny_cpu.yaml", root / "config.yaml")
    for name, target in (("tiny", root / "models"), ):
        if not (root / name).exists():
            os.symlink(target, root / name)
    argv = ["--config", str(root / "config.yaml")]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    return argv


def child(root: Path, cached: bool, steps: int, device: str) -> dict:
    """Run inside a fresh process: setup (incl. precompute when cached), then time steps."""
    import torch
    sys.path.insert(0, str(REPO))
    from training.config import load_config
    from training.loop import setup, train_step
    from training.train import parser

    args = parser().parse_args(config(root, cached, steps))
    cfg = load_config(args.config, args.set)
    t0 = time.perf_counter()
    run = setup(cfg)
    setup_s = time.perf_counter() - t0
    times = []
    for step in range(steps):
        t = time.perf_counter()
        train_step(run, step)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cached": cached, "setup_s": setup_s, "step_s": statistics.median(times[1:]), "peak_mb": peak,
            "times": [round(t, 3) for t in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="steps per variant (the first is warm-up)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--root", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--child", choices=["online", "cached"], help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        sys.stdout.write("RESULT " + json.dumps(child(Path(args.root), args.child == "cached", args.steps,
                                                     args.device)) + "\n")
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="refcomp-bench-"))
    if not (root / "data" / "manifest.jsonl").exists():
        build(root)
    results = {}
    for variant in ("online", "cached"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        if args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--root", str(root), "--steps",
                              str(args.steps), "--device", args.device], env=env, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"{variant} run failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(line[0][7:])
    on, ca = results["online"], results["cached"]
    log.warning("device %s, %d steps, batch 2, 256 px, FLUX D=256 (4 double + 8 single blocks)", args.device,
                args.steps)
    for name, r in results.items():
        log.warning("%-7s step %.3f s  peak %.0f MiB  (setup %.1f s; steps %s)", name, r["step_s"], r["peak_mb"],
                    r["setup_s"], r["times"])
    log.warning("cached / online: step time %.2fx, peak memory %.2fx", ca["step_s"] / on["step_s"],
                ca["peak_mb"] / on["peak_mb"])


if __name__ == "__main__":
    main()
