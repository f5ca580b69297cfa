"""RefComp checkpoint files under hostile input (issue 12): truncated and corrupted
bodies, wrong shapes, metadata of every wrong type, configs that would allocate
terabytes. The only outcomes: a loaded adapter, or a CheckpointError naming the file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import refcomp_core.checkpoint as checkpoint
from helpers import TINY_ADAPTER
from hostile_strategies import EDGE_NUMBERS, accepted_or_ours, json_values, texts
from refcomp_core import CheckpointError, RefCompAdapter, RefCompConfig
from refcomp_core.checkpoint import load_adapter, read_info, save_adapter

CONFIG = RefCompConfig(hidden_size=32, num_double_blocks=2, num_single_blocks=2, num_heads=2, layout_blocks=(1,),
                       **TINY_ADAPTER)


def raw_safetensors(tensors: dict[str, torch.Tensor], metadata: object) -> bytes:
    """A safetensors file written by hand, so metadata can be of any JSON type."""
    header: dict = {"__metadata__": metadata}
    body = b""
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def meta(config: object = None, **extra: object) -> dict:
    out = {"format": "refcomp", "refcomp_config": CONFIG.to_json() if config is None else config,
           "stage": "2", "step": "17", "base_model": '"tiny"'}
    return {**out, **extra}


class GoodFile(tuple):
    """(path, bytes, tensors) of a valid checkpoint; a short repr for hypothesis reports."""

    def __repr__(self) -> str:
        return f"GoodFile({self[0]})"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> GoodFile:
    torch.manual_seed(0)
    adapter = RefCompAdapter(CONFIG)
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    save_adapter(path, adapter, stage=2, step=17, base_model="tiny")
    tensors = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    return GoodFile((path, path.read_bytes(), tensors))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "hostile.safetensors"


def load_or_ours(path: Path, data: bytes, **kwargs):
    path.write_bytes(data)
    out = accepted_or_ours(lambda: load_adapter(path, **kwargs), CheckpointError, str(path))
    if not isinstance(out, Exception):
        adapter, _ = out
        assert all(bool(torch.isfinite(p).all()) for p in adapter.parameters())
    return out


# --- the examples, each one escaped before the fix ---------------------------------------
def test_truncated_body(good, scratch):
    _, data, _ = good
    scratch.write_bytes(data[:-100])                        # was SafetensorError
    with pytest.raises(CheckpointError, match=f"{scratch}.*(truncated|beyond the end)"):
        load_adapter(scratch)


def test_corrupted_body_of_nan(good, scratch):
    _, data, _ = good
    header_len = 8 + struct.unpack("<Q", data[:8])[0]
    scratch.write_bytes(data[:header_len] + b"\xff" * (len(data) - header_len))   # was loaded silently
    with pytest.raises(CheckpointError, match=f"{scratch}.*NaN"):
        load_adapter(scratch)


def test_wrong_tensor_shape(good, scratch):
    _, _, tensors = good
    bad = dict(tensors)
    name = next(k for k in bad if k.startswith("lora."))
    bad[name] = torch.zeros(bad[name].shape[0] + 1, *bad[name].shape[1:])        # was RuntimeError: size mismatch
    scratch.write_bytes(raw_safetensors(bad, meta()))
    with pytest.raises(CheckpointError, match=f"{scratch}: tensor {name} has shape"):
        load_adapter(scratch)


@pytest.mark.parametrize("config, field", [
    ("[1, 2]", "expected a JSON object"),                          # was AttributeError
    ("\"text\"", "expected a JSON object"),
    (json.dumps({**json.loads(CONFIG.to_json()), "hidden_size": "32"}), "hidden_size"),     # was TypeError
    (json.dumps({**json.loads(CONFIG.to_json()), "lora_targets": 5}), "lora_targets"),      # was TypeError
    (json.dumps({**json.loads(CONFIG.to_json()), "num_heads": 3}), "num_heads"),             # bare ValueError
    (json.dumps({**json.loads(CONFIG.to_json()), "format_version": "1"}), "format_version"),  # was TypeError
    (json.dumps({**json.loads(CONFIG.to_json()), "extra": []}), "extra"),                    # was TypeError
    (json.dumps({k: v for k, v in json.loads(CONFIG.to_json()).items() if k != "num_heads"}), "num_heads"),
    (json.dumps({**json.loads(CONFIG.to_json()), "fourier_temperature": "NaN"}), "fourier_temperature"),
    (json.dumps({**json.loads(CONFIG.to_json()), "dino_dim": 11}), "dino_dim"),     # an invariant of the modules
    ("{\"hidden_size\": " + "9" * 5000 + "}", "not valid JSON"),                             # int digit limit
    ("[" * 100000, "not valid JSON"),                                                          # RecursionError
    (7, "expected JSON text"),
])
def test_refcomp_config_of_wrong_type_names_file_and_field(good, scratch, config, field):
    _, _, tensors = good
    scratch.write_bytes(raw_safetensors(tensors, meta(config)))
    with pytest.raises(CheckpointError) as err:
        load_adapter(scratch)
    assert str(err.value).startswith(f"{scratch}: refcomp_config") and field in str(err.value)


@pytest.mark.parametrize("key, value", [("stage", "two"), ("step", "{"), ("step", "1.5"), ("stage", "true"),
                                        ("base_model", "3"), ("step", 17), ("stage", "[" * 100000)])
def test_non_json_stage_and_step(good, scratch, key, value):
    _, _, tensors = good
    scratch.write_bytes(raw_safetensors(tensors, meta(**{key: value})))       # was JSONDecodeError
    with pytest.raises(CheckpointError, match=f"{scratch}: metadata {key} must be"):
        read_info(scratch)


@pytest.fixture
def no_real_allocation(monkeypatch):
    """Fails a test if the loader builds a large adapter anywhere but on the meta device."""
    real = checkpoint.RefCompAdapter

    def guarded(config):
        sizes = (config.hidden_size, config.lora_rank, 16 * config.num_double_blocks, 16 * config.num_single_blocks)
        if max(sizes) > 1024 and torch.get_default_device().type != "meta":
            raise AssertionError(f"built a large adapter ({sizes}) before any check")
        return real(config)

    monkeypatch.setattr(checkpoint, "RefCompAdapter", guarded)


@pytest.mark.parametrize("sizes, expected", [
    ({"hidden_size": 2 ** 40, "num_heads": 2 ** 10}, "field hidden_size must be an integer in"),
    ({"lora_rank": 10 ** 12}, "field lora_rank"),
    ({"num_double_blocks": 10 ** 6, "layout_blocks": None}, "field num_double_blocks"),
    ({"hidden_size": 65536, "num_heads": 512, "lora_rank": 65536}, "tensors do not match|has shape"),
])
def test_config_sizes_that_would_allocate_terabytes(good, scratch, no_real_allocation, sizes, expected):
    _, _, tensors = good
    config = {**json.loads(CONFIG.to_json()), **sizes}
    scratch.write_bytes(raw_safetensors(tensors, meta(json.dumps(config))))
    with pytest.raises(CheckpointError, match=expected) as err:
        load_adapter(scratch)
    assert str(scratch) in str(err.value)


def test_the_good_file_still_loads(good):
    path, _, tensors = good
    adapter, info = load_adapter(path, hidden_size=32, num_double_blocks=2, num_single_blocks=2)
    assert (info.stage, info.step, info.base_model) == (2, 17, "tiny") and info.config == CONFIG
    assert all(torch.equal(v, tensors[k]) for k, v in adapter.state_dict().items())


# --- properties ---------------------------------------------------------------------------------
@given(st.data())
def test_any_truncation_is_refused(good, scratch, data):
    _, raw, _ = good
    cut = data.draw(st.one_of(st.integers(0, 200), st.integers(0, len(raw) - 1)), label="length")
    out = load_or_ours(scratch, raw[:cut])
    assert isinstance(out, CheckpointError)


@given(st.data())
def test_flipped_bytes_load_or_name_the_file(good, scratch, data):
    _, raw, _ = good
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    position = st.one_of(st.integers(0, header_end - 1), st.integers(0, len(raw) - 1))
    flips = data.draw(st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=4), label="flips")
    corrupted = bytearray(raw)
    for at, byte in flips:
        corrupted[at] = byte
    load_or_ours(scratch, bytes(corrupted))


@given(st.one_of(json_values, st.builds(json.dumps, json_values), texts))
def test_refcomp_config_of_any_value(good, scratch, config):
    _, _, tensors = good
    load_or_ours(scratch, raw_safetensors(tensors, meta(config)))


CONFIG_FIELDS = sorted(json.loads(CONFIG.to_json()))


@given(st.sampled_from(CONFIG_FIELDS), st.one_of(json_values, st.sampled_from(EDGE_NUMBERS)))
def test_one_hostile_config_field_is_named(field, value):
    """From the metadata text alone: a config, or an error naming the source and the field."""
    config = {**json.loads(CONFIG.to_json()), field: value}
    try:
        text = json.dumps(config)
    except ValueError:
        return                                                   # not representable as JSON text
    out = accepted_or_ours(lambda: RefCompConfig.from_json(text, source="FILE: refcomp_config"),
                           CheckpointError, "FILE: refcomp_config")
    if isinstance(out, CheckpointError):
        assert field in str(out), str(out)


@given(st.dictionaries(st.sampled_from(["stage", "step", "base_model", "format", "other"]),
                       st.one_of(json_values, st.builds(json.dumps, json_values), texts), max_size=4))
def test_metadata_of_every_wrong_type(good, scratch, fields):
    _, _, tensors = good
    scratch.write_bytes(raw_safetensors(tensors, meta(**fields)))
    accepted_or_ours(lambda: read_info(scratch), CheckpointError, str(scratch))
    load_or_ours(scratch, scratch.read_bytes())


@given(json_values)
def test_metadata_that_is_not_an_object(good, scratch, value):
    _, _, tensors = good
    load_or_ours(scratch, raw_safetensors(tensors, value))
