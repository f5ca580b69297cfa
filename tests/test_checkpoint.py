"""The one safetensors checkpoint (DESIGN §5)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import features, flux_inputs, random_layout, randomize, tiny_adapter, tiny_flux
from refcomp_core import CheckpointError, Controls, RefCompSession, build_state
from refcomp_core.checkpoint import load_adapter, read_info, save_adapter
from refcomp_core.hosts.diffusers_flux import flux_dims, patch_flux


def output(model, adapter, layout):
    state = build_state(adapter, layout, features(adapter, layout))
    with torch.no_grad(), patch_flux(model, RefCompSession(adapter, state, Controls(layout_window=(0, 1)))):
        return model(**flux_inputs(model, batch=1))[0]


def test_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model, layout_blocks=(1,)), scale=0.2)
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter, stage=2, step=17, base_model="tiny-flux")
    dims = flux_dims(model)
    loaded, info = load_adapter(path, hidden_size=dims.hidden_size, num_double_blocks=dims.num_double_blocks,
                                num_single_blocks=dims.num_single_blocks)
    assert (info.stage, info.step, info.base_model) == (2, 17, "tiny-flux")
    assert info.config == adapter.config and loaded.config.layout_blocks == (1,)
    layout = random_layout(6, seed=2)
    assert torch.equal(output(model, loaded, layout), output(model, adapter, layout))
    names = {k.split(".")[0] for k in loaded.state_dict()}
    assert names == {"alpha", "encoder", "layout_head", "modulation", "bridge", "assemble_gate", "lora",
                     "single_gate"}
    assert not (tmp_path / "a.safetensors.tmp").exists()


def test_pickle_file_is_refused(tmp_path):
    adapter = tiny_adapter(tiny_flux())
    path = tmp_path / "a.pt"
    torch.save(adapter.state_dict(), path)
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_adapter(path)


def test_safetensors_without_refcomp_metadata_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a RefComp checkpoint"):
        read_info(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.safetensors"):
        load_adapter(tmp_path / "nope.safetensors")


def test_wrong_hidden_size_names_both_numbers(tmp_path):
    adapter = tiny_adapter(tiny_flux())
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter)
    with pytest.raises(CheckpointError, match="hidden size 32.*hidden size 3072"):
        load_adapter(path, hidden_size=3072)
    with pytest.raises(CheckpointError, match="double-block count 2.*double-block count 19"):
        load_adapter(path, hidden_size=32, num_double_blocks=19)


def test_newer_format_version_is_refused(tmp_path):
    adapter = tiny_adapter(tiny_flux())
    cfg = json.loads(adapter.config.to_json())
    cfg["format_version"] = 99
    tensors = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    path = tmp_path / "future.safetensors"
    save_file(tensors, str(path), metadata={"format": "refcomp", "refcomp_config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="upgrade RefComp"):
        read_info(path)


def test_config_invariants():
    from refcomp_core import RefCompConfig
    with pytest.raises(ValueError, match="divisible"):
        RefCompConfig(hidden_size=30, num_double_blocks=1, num_single_blocks=0, num_heads=4)
    with pytest.raises(ValueError, match="layout_blocks"):
        RefCompConfig(hidden_size=32, num_double_blocks=2, num_single_blocks=0, num_heads=2, layout_blocks=(2,))
    with pytest.raises(ValueError, match="lora_targets"):
        RefCompConfig(hidden_size=32, num_double_blocks=2, num_single_blocks=0, num_heads=2, lora_targets=("x",))
