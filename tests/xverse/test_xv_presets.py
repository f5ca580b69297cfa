"""Official XVerse settings, the VAE-skip schedule on the timestep value, reference position ids
(WEIGHTS_COMPAT §2.1, §2.4, §2.7)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refcomp_core.xverse import PRESETS, XVersePreset, parse_schedule, reference_position_ids, schedule_value, \
    vae_skip_steps


def flux_timesteps(width: int, height: int, steps: int) -> tuple[list[float], float]:
    """FLUX.1-dev's schedule from its formula: sigmas linspace(1, 1/T, T), dynamically shifted by
    mu = linear in the image token count (256 -> 0.5, 4096 -> 1.15); t = 1000 * shifted sigma."""
    tokens = (width // 16) * (height // 16)
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    sigmas = np.linspace(1.0, 1.0 / steps, steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    return [1000.0 * s for s in shifted], mu


def test_skip_steps_at_768_28_steps_are_0_to_3_and_26_27() -> None:
    timesteps, mu = flux_timesteps(768, 768, 28)
    assert abs(mu - 0.8467) < 1e-4
    assert vae_skip_steps(timesteps) == {0, 1, 2, 3, 26, 27}
    assert PRESETS["cli"].skip_steps(timesteps) == {0, 1, 2, 3, 26, 27}
    sigmas = [t / 1000 for t in timesteps]                    # ComfyUI's scale: same steps relative to t0
    assert vae_skip_steps(torch.tensor(sigmas)) == {0, 1, 2, 3, 26, 27}


def test_the_formula_is_the_diffusers_scheduler() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    timesteps, mu = flux_timesteps(768, 768, 28)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28).tolist(), mu=mu)
    assert np.allclose(scheduler.timesteps.numpy(), timesteps, atol=1e-3)
    assert vae_skip_steps(scheduler.timesteps) == {0, 1, 2, 3, 26, 27}


def test_windows_are_inclusive_on_the_timestep_value_and_the_first_match_wins() -> None:
    assert vae_skip_steps([1000, 950, 949.9, 500, 200.1, 200, 0]) == {0, 1, 5, 6}
    assert vae_skip_steps([1000, 950, 200], intervals="0-0.05:0,0-1:1") == {2}      # first window says 0
    assert vae_skip_steps([800, 760, 100], t0=1000) == {2}                            # t0 given: not timesteps[0]
    assert vae_skip_steps([800, 760, 100]) == {0, 1, 2}
    assert vae_skip_steps([]) == frozenset()
    windows = parse_schedule("0-1:1/3/5".split("/")[0])
    assert schedule_value(0.0, 1.0, windows) == 1.0 and schedule_value(2.0, 1.0, windows, default=7) == 7
    for bad in ("0-0.05", "0.5-0.2:1", "a-b:1", "0-1.5:1"):
        with pytest.raises(ValueError, match="schedule"):
            parse_schedule(bad)


def test_presets_of_the_official_entry_points() -> None:
    cli, demo, bench = PRESETS["cli"], PRESETS["demo"], PRESETS["benchmark"]
    assert (cli.lora_scale, demo.lora_scale, bench.lora_scale) == (1.0, 0.85, 0.85)
    for p in (cli, demo, bench):
        assert (p.weight_id, p.weight_ip, p.weight_global) == (3.0, 5.0, 1.0)
        assert (p.latent_sblora_scale, p.condition_sblora_scale) == (0.85, 1.3)
        assert (p.cond_size, p.width, p.height, p.steps, p.vae_skip) == (256, 768, 768, 28, "0-0.05:1,0.8-1:1")
        assert p.reference_tokens == 256
    assert cli.log_lambda(True) == math.log(3) and cli.log_lambda(False) == math.log(5)
    with pytest.raises(ValueError, match="weight_id must be > 0"):
        XVersePreset(name="x", lora_scale=1.0, weight_id=0)
    with pytest.raises(ValueError, match="cond_size must be a positive multiple of 16"):
        XVersePreset(name="x", lora_scale=1.0, cond_size=250)


def test_reference_position_ids_are_diagonal_squares_up_left() -> None:
    from diffusers import FluxPipeline

    grid = FluxPipeline._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32)     # (256, 3): (0, row, col)
    for i in range(3):
        ids = reference_position_ids(i, 256)
        assert ids.shape == (256, 3) and ids.dtype == torch.float32
        assert torch.equal(ids, grid + torch.tensor([0.0, -16.0 * (i + 1), -16.0 * (i + 1)]))
    assert reference_position_ids(0)[1].tolist() == [0, -16, -15] and reference_position_ids(1)[-1].tolist() == \
        [0, -17, -17]
    assert reference_position_ids(0, 384).shape == (576, 3) and reference_position_ids(0, 384)[0, 1] == -24
    with pytest.raises(ValueError, match="multiple of 16"):
        reference_position_ids(0, 100)
