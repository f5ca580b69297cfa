"""CompositionState: built once per run, cached per grid; clear errors for missing encoders."""
import logging

import pytest
import torch

from helpers import features, random_layout, tiny_adapter, tiny_flux
from refcomp_core import InstanceFeatures, MissingEncoderError, TokenGrid, build_state, parse_layout


def layout_of(*instances):
    return parse_layout({"version": 1, "width": 128, "height": 128, "instances": list(instances)}, num_refs=2)


def test_grid_index_is_cached_per_grid():
    adapter = tiny_adapter(tiny_flux())
    layout = random_layout(8, seed=4)
    state = build_state(adapter, layout, features(adapter, layout))
    a = state.grid(TokenGrid(8, 8), 1.0, torch.device("cpu"))
    assert state.grid(TokenGrid(8, 8), 1.0, torch.device("cpu")) is a
    b = state.grid(TokenGrid(6, 10), 1.0, torch.device("cpu"))
    assert b is not a and int(b.asm_cov.max()) < 60


def test_fg_without_dino_is_a_clear_error():
    adapter = tiny_adapter(tiny_flux())
    layout = layout_of({"box": [0, 0, 0.5, 0.5], "ref": 0, "alpha": 0.9})
    feats = features(adapter, layout, num_refs=2)
    with pytest.raises(MissingEncoderError, match=r"instances \[0\] need DINOv2"):
        build_state(adapter, layout, InstanceFeatures(clip_image=feats.clip_image, dino=None))


def test_bg_without_clip_is_a_clear_error():
    adapter = tiny_adapter(tiny_flux())
    layout = layout_of({"box": [0, 0, 0.5, 0.5], "ref": 1, "alpha": 0.1})
    with pytest.raises(MissingEncoderError, match="CLIP-L image"):
        build_state(adapter, layout, InstanceFeatures(dino=torch.zeros(2, adapter.config.dino_dim)))


def test_caption_only_needs_no_encoder():
    adapter = tiny_adapter(tiny_flux())
    layout = layout_of({"box": [0, 0, 0.5, 0.5], "caption": "a dog"})
    state = build_state(adapter, layout, InstanceFeatures())
    assert state.n == 1 and state.n_fg == 0


def test_zero_instances_warns(caplog):
    adapter = tiny_adapter(tiny_flux())
    with caplog.at_level(logging.WARNING):
        state = build_state(adapter, layout_of(), InstanceFeatures())
    assert state.n == 0 and "no instances" in caplog.text


def test_feature_width_mismatch_is_named():
    adapter = tiny_adapter(tiny_flux())
    layout = layout_of({"box": [0, 0, 0.5, 0.5], "ref": 0})
    with pytest.raises(ValueError, match="width 5, the adapter expects 12"):
        build_state(adapter, layout, InstanceFeatures(clip_image=torch.zeros(2, 5)))


def test_too_few_reference_features():
    adapter = tiny_adapter(tiny_flux())
    layout = layout_of({"box": [0, 0, 0.5, 0.5], "ref": 1})
    with pytest.raises(ValueError, match="only 1 reference"):
        build_state(adapter, layout, InstanceFeatures(clip_image=torch.zeros(1, 12)))
