"""Manifest reading, bad-sample skipping, bucketing, the resumable batch order, config."""
from __future__ import annotations

import pytest

from refcomp_core import STAGE_MODULES
from training.config import DataConfig, load_config
from training.data import batch_for_step, epoch_batches, nearest_bucket, read_manifest

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "training" / "configs"


def test_bad_samples_are_skipped_and_counted(tmp_path):
    from dataset import make_dataset
    manifest = make_dataset(tmp_path, bad=True)
    samples, skipped = read_manifest(DataConfig(manifest=str(manifest), buckets=[[64, 64], [64, 96]]))
    assert len(samples) == 7                       # 6 good + the unreadable image (found only when loaded)
    assert dict(skipped.counts) == {"missing file": 1, "bad layout": 1, "bad JSON": 1}
    assert all(isinstance(i.ref, (int, type(None))) for s in samples for i in s.layout.instances)
    assert samples[0].refs[0].endswith("crops/0_0.png")


def test_unreadable_image_is_replaced_and_counted_once(tmp_path, tiny_models):
    from dataset import make_dataset
    from training.config import ModelPaths
    from training.features import load_batch
    from training.models import Needs, load_frozen
    import torch

    manifest = make_dataset(tmp_path, bad=True)
    cfg = DataConfig(manifest=str(manifest), buckets=[[64, 64], [64, 96]], max_text_len=8)
    samples, skipped = read_manifest(cfg)
    broken = next(i for i, s in enumerate(samples) if s.image.endswith("broken.png"))
    paths = ModelPaths(flux_root=str(tiny_models.flux), clip_vision=str(tiny_models.clip), dino=str(tiny_models.dino))
    fz = load_frozen(paths, Needs(encoders=True), torch.device("cpu"), torch.float32)
    for _ in range(2):
        batch = load_batch(fz, samples, [broken, 0], cfg, skipped)
        assert batch.latents.shape[0] == 2 and samples[broken].line not in batch.lines
    assert skipped.counts["unreadable"] == 1      # remembered: not retried, not double-counted


def test_buckets_and_batches():
    assert nearest_bucket(1000, 1000, [[1024, 1024], [1216, 832]]) == (1024, 1024)
    assert nearest_bucket(1500, 1000, [[1024, 1024], [1216, 832]]) == (1216, 832)


def test_batch_order_is_a_pure_function_of_the_step(tiny_data):
    cfg = DataConfig(manifest=str(tiny_data / "manifest.jsonl"), buckets=[[64, 64], [64, 96]], batch_size=2)
    samples, _ = read_manifest(cfg)
    for world in (1, 2):
        batches = epoch_batches(samples, 2, seed=0, epoch=0, world=world)
        assert len(batches) % world == 0
        assert all(len({samples[i].bucket for i in b}) == 1 for b in batches)     # one bucket per batch
    first = [batch_for_step(samples, cfg, 0, s, 0, 2) for s in range(6)]
    assert first == [batch_for_step(samples, cfg, 0, s, 0, 2) for s in range(6)]
    assert batch_for_step(samples, cfg, 0, 0, 0, 2) != batch_for_step(samples, cfg, 0, 0, 1, 2)
    assert epoch_batches(samples, 2, 0, 0, 1) != epoch_batches(samples, 2, 0, 1, 1)   # reshuffled per epoch


def test_stage_configs_carry_the_plan_defaults():
    want = {1: (1e-4, 70_000), 2: (5e-6, 150_000), 3: (1e-5, 10_000)}
    for stage, (lr, steps) in want.items():
        cfg = load_config(str(CONFIGS / f"stage{stage}.yaml"))
        assert (cfg.stage, cfg.learning_rate, cfg.max_steps) == (stage, lr, steps)
        assert cfg.trainable == STAGE_MODULES[stage]
        assert (cfg.init_from is None) == (stage == 1)
    assert load_config(str(CONFIGS / "stage2.yaml")).loss.identity_weight == 10.0
    late = load_config(str(CONFIGS / "stage1.yaml"), ["alpha_from_stage=2"])
    assert "alpha" not in late.trainable and not late.modulation_enabled


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="init_from"):
        load_config(str(CONFIGS / "stage2.yaml"), ["init_from=null"])
    with pytest.raises(ValueError, match="stage"):
        load_config(str(CONFIGS / "stage1.yaml"), ["stage=4"])
    with pytest.raises(ValueError, match="loss.identity_wieght"):
        load_config(str(CONFIGS / "stage1.yaml"), ["loss.identity_wieght=1"])
    with pytest.raises(ValueError, match="data.buckets"):
        load_config(str(CONFIGS / "stage1.yaml"), ["data.buckets=[[100, 64]]"])


def test_accelerate_example_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    assert str(load_config_from_file(str(CONFIGS / "accelerate_ddp.yaml")).distributed_type).endswith("MULTI_GPU")
    fsdp = load_config_from_file(str(CONFIGS / "accelerate_fsdp.yaml"))
    assert str(fsdp.distributed_type).endswith("FSDP") and fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
