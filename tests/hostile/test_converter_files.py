"""`refcomp convert instanceassemble` / `xverse` and the converted-file loader under hostile input:
truncated and corrupted release files, config.json values of every kind, LoRA and converted files whose
metadata has the wrong types. The only outcomes: a converted file that loads, or the pack's
CheckpointError / UsageError on one line naming the file or flag, with nothing half-written left behind."""
from __future__ import annotations

import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "xverse"), str(HERE.parent / "ia")]

import ia_files  # noqa: E402
import xv_files  # noqa: E402
from hostile_strategies import accepted_or_ours, hostile_values, json_values, texts  # noqa: E402
from refcomp import cli  # noqa: E402
from refcomp.convert import run as run_convert  # noqa: E402
from refcomp_core.checkpoint import load_adapter  # noqa: E402
from refcomp_core.errors import CheckpointError, UsageError  # noqa: E402
from refcomp_core.released.xverse import load_xverse  # noqa: E402

FLUX = ia_files.IA_TINY_FLUX                  # 4 double blocks (InstanceAssemble's layout blocks 0 and 3), 2 single
OURS = (CheckpointError, UsageError)


@dataclass
class Release:
    """Good files of both releases at tiny size (bytes), rewritten into `folder` before every example."""

    folder: Path
    good: dict[str, bytes]

    def path(self, kind: str) -> Path:
        return self.folder / {"ia_layout": "layout.pth", "ia_lora": "ia_lora.safetensors",
                              "xv_config": "modulation_adapter/config.json",
                              "xv_weights": "modulation_adapter/diffusion_pytorch_model.safetensors",
                              "xv_bin": "modulation_adapter/diffusion_pytorch_model.bin",
                              "xv_lora": "xv_lora.safetensors", "flux_config": "flux_config.json"}[kind]

    def reset(self, bin_weights: bool = False) -> None:
        for kind, data in self.good.items():
            path = self.path(kind)
            if kind == ("xv_weights" if bin_weights else "xv_bin"):
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (self.folder / "out").mkdir(exist_ok=True)

    def argv(self, method: str) -> list[str]:
        if method == "instanceassemble":
            inputs = ["--layout", str(self.path("ia_layout")), "--lora", str(self.path("ia_lora"))]
        else:
            inputs = ["--adapter", str(self.path("xv_config").parent), "--lora", str(self.path("xv_lora"))]
        return ["convert", method, *inputs, "--out", str(self.out), "--transformer-config",
                str(self.path("flux_config"))]

    @property
    def out(self) -> Path:
        return self.folder / "out" / "converted.safetensors"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    folder = tmp_path_factory.mktemp("release")
    scratch = tmp_path_factory.mktemp("writers")
    ia_files.write_layout_pth(scratch / "layout.pth", FLUX)
    ia_files.write_lora(scratch / "ia_lora.safetensors", ia_files.lora_tensors(FLUX, rank=2))
    tensors = xv_files.adapter_tensors(xv_files.TINY_CONFIG, num_double=FLUX["num_layers"])
    xv_files.write_adapter(scratch / "st", tensors=tensors)
    xv_files.write_adapter(scratch / "bin", tensors=tensors, fmt="bin")
    xv_files.write_lora(scratch / "xv_lora.safetensors", xv_files.lora_tensors(FLUX, rank=2))
    good = {"ia_layout": (scratch / "layout.pth").read_bytes(),
            "ia_lora": (scratch / "ia_lora.safetensors").read_bytes(),
            "xv_config": (scratch / "st" / "config.json").read_bytes(),
            "xv_weights": (scratch / "st" / "diffusion_pytorch_model.safetensors").read_bytes(),
            "xv_bin": (scratch / "bin" / "diffusion_pytorch_model.bin").read_bytes(),
            "xv_lora": (scratch / "xv_lora.safetensors").read_bytes(),
            "flux_config": json.dumps({"_class_name": "FluxTransformer2DModel", **FLUX}).encode()}
    return Release(folder, good)


def converted_or_ours(release: Release, method: str, places: tuple[str, ...]):
    """Run `refcomp convert METHOD` as the command does (without main's catch-all, so any other exception
    fails): a file that loads back, or our error naming one of `places`; never a partial file."""
    args = cli.build_parser().parse_args(release.argv(method))
    out = accepted_or_ours(lambda: run_convert(args), OURS, places)
    left = sorted(os.listdir(release.out.parent))
    if isinstance(out, Exception):
        assert left == [], left                                         # no output, no temporary file
        return out
    assert left == [release.out.name], left
    if method == "xverse":
        adapter, _ = load_xverse(release.out)
        assert all(bool(torch.isfinite(p).all()) for p in adapter.parameters())
    else:
        load_adapter(release.out)                                       # refuses NaN / infinite values itself
    release.out.unlink()
    return out


FILES = {"ia_layout": ("instanceassemble", "--layout"), "ia_lora": ("instanceassemble", "--lora"),
         "xv_config": ("xverse", "--adapter"), "xv_weights": ("xverse", "--adapter"),
         "xv_bin": ("xverse", "--adapter"), "xv_lora": ("xverse", "--lora"),
         "flux_config": ("xverse", "--")}                # another valid size: any input may be named


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """`data` truncated, with bytes overwritten, or with bytes inserted."""
    how = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out) - 1))
        if how == "overwrite":
            out[at] = draw(st.integers(0, 255))
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


def test_the_good_files_convert(release):
    for method in ("instanceassemble", "xverse"):
        release.reset()
        assert converted_or_ours(release, method, ("",)) == 0
    release.reset(bin_weights=True)
    assert converted_or_ours(release, "xverse", ("",)) == 0


@given(st.sampled_from(sorted(FILES)), st.data())
def test_damaged_release_files(release, kind, data):
    method, flag = FILES[kind]
    release.reset(bin_weights=kind == "xv_bin")
    path = release.path(kind)
    path.write_bytes(data.draw(damaged(release.good[kind]), label="bytes"))
    converted_or_ours(release, method, (str(path), str(path.parent), flag))


@given(st.sampled_from(sorted(xv_files.TINY_CONFIG)), hostile_values)
def test_xverse_config_values(release, key, value):
    """config.json with one value of any kind (or of a key that is not XVerse's)."""
    release.reset()
    config = {**xv_files.TINY_CONFIG, key: value}
    release.path("xv_config").write_text(json.dumps(config))
    converted_or_ours(release, "xverse", (str(release.path("xv_config").parent),))


@given(json_values)
def test_xverse_config_documents(release, doc):
    release.reset()
    release.path("xv_config").write_text(json.dumps(doc))
    converted_or_ours(release, "xverse", (str(release.path("xv_config").parent),))


@given(st.sampled_from(["num_attention_heads", "attention_head_dim", "num_layers", "num_single_layers",
                        "pooled_projection_dim", "in_channels"]), hostile_values, st.sampled_from(sorted(FILES)))
def test_transformer_config_values(release, key, value, kind):
    release.reset()
    release.path("flux_config").write_text(json.dumps({**FLUX, key: value}))
    # a valid config of another size is accepted; then the release files do not fit it and are named
    converted_or_ours(release, FILES[kind][0], ("--transformer-config", "--lora", "--layout", "--adapter"))


def raw_safetensors(tensors: dict[str, torch.Tensor], header_extra: dict) -> bytes:
    """A safetensors file written by hand, so the metadata (and the keys) can be anything JSON holds."""
    header: dict = dict(header_extra)
    body = b""
    for name, t in tensors.items():
        data = t.contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def lora_tensors(method: str) -> dict[str, torch.Tensor]:
    if method == "xverse":
        return xv_files.lora_file_keys(xv_files.lora_tensors(FLUX, rank=2))
    return ia_files.to_file_keys(ia_files.lora_tensors(FLUX, rank=2), "peft")


metadata_values = st.one_of(json_values, st.dictionaries(texts, json_values, max_size=4),
                            st.dictionaries(st.just("lora_adapter_metadata"),
                                            st.one_of(hostile_values, hostile_values.map(json.dumps)), min_size=1))


@given(st.sampled_from(["instanceassemble", "xverse"]), metadata_values)
def test_lora_metadata_of_any_type(release, method, metadata):
    release.reset()
    path = release.path("ia_lora" if method == "instanceassemble" else "xv_lora")
    path.write_bytes(raw_safetensors(lora_tensors(method), {"__metadata__": metadata}))
    converted_or_ours(release, method, ("--lora",))


@given(st.sampled_from(["instanceassemble", "xverse"]), texts, st.sampled_from([(1,), (2, 2), (0, 32), (3,)]))
def test_lora_keys_of_any_text(release, method, key, shape):
    """A key of any text (newlines, surrogate escapes, very long) and a shape: named on one line."""
    release.reset()
    path = release.path("ia_lora" if method == "instanceassemble" else "xv_lora")
    try:
        data = raw_safetensors({**lora_tensors(method), key: torch.ones(shape)}, {})
    except UnicodeEncodeError:                          # a lone surrogate cannot be written to a header
        return
    path.write_bytes(data)
    converted_or_ours(release, method, ("--lora",))


@given(json_values)
def test_layout_pth_holding_other_values(release, value):
    """A weights-only pickle that loads, but not as a dict of tensors."""
    release.reset()
    torch.save({"layout_net.text_embedder.linear_1.weight": torch.zeros(1), "extra": value}, release.path("ia_layout"))
    converted_or_ours(release, "instanceassemble", ("--layout",))


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> bytes:
    release.reset()
    args = cli.build_parser().parse_args(release.argv("xverse"))
    assert run_convert(args) == 0
    data = release.out.read_bytes()
    release.out.unlink()
    return data


@given(st.sampled_from(["format", "kind", "xverse_config", "source", "base_model", "other"]),
       st.one_of(hostile_values, hostile_values.map(json.dumps)), st.data())
def test_converted_file_metadata_of_any_type(release, converted, field, value, data):
    """The converted XVerse file read back (by `refcomp compose --xverse`) with one metadata field changed."""
    from safetensors import safe_open

    path = release.folder / "converted_hostile.safetensors"
    path.write_bytes(converted)
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if field == "xverse_config" and data.draw(st.booleans(), label="inside the config"):
        config = json.loads(meta["xverse_config"])
        config[data.draw(st.sampled_from(sorted(config)), label="config key")] = value
        meta["xverse_config"] = json.dumps(config)
    else:
        meta[field] = value
    path.write_bytes(raw_safetensors(tensors, {"__metadata__": meta}))
    out = accepted_or_ours(lambda: load_xverse(path), CheckpointError, str(path))
    if not isinstance(out, Exception):
        assert all(bool(torch.isfinite(p).all()) for p in out[0].parameters())


def test_a_failing_write_keeps_the_old_converted_file(release, monkeypatch):
    """The XVerse converter writes through atomic_path: a writer dying half-way leaves the old file."""
    import safetensors.torch

    release.reset()
    release.out.write_bytes(b"old file")

    def dies(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        run_convert(cli.build_parser().parse_args(release.argv("xverse")))
    assert release.out.read_bytes() == b"old file" and os.listdir(release.out.parent) == [release.out.name]
    release.out.unlink()


@pytest.mark.parametrize("change, message", [
    (lambda argv: [a if a != argv[-3] else "out.pt" for a in argv], r"--out: out.pt must end in \.safetensors"),
    (lambda argv: argv[:-2] + ["--transformer-config", "/nonexistent/config.json"],
     r"--transformer-config /nonexistent/config.json: not a readable config.json"),
    (lambda argv: argv[:2] + argv[4:], r"the following arguments are required: --lora|--layout|--adapter"),
    (lambda argv: argv + ["--rank", "4"], r"unrecognized arguments: --rank 4"),
])
@pytest.mark.parametrize("method", ["instanceassemble", "xverse"])
def test_bad_flags_are_usage_errors_with_exit_2(release, method, change, message, caplog):
    release.reset()
    argv = change(release.argv(method))
    with pytest.raises(UsageError, match=message):
        run_convert(cli.build_parser().parse_args(argv))
    assert cli.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= 40]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in caplog.text


def _nan_in(kind: str):
    def change(release: Release) -> None:
        tensors = lora_tensors("xverse")
        key = next(k for k in tensors if k.endswith("lora_B.weight"))
        if kind == "alpha":
            tensors = {**tensors, key.replace("lora_B.weight", "alpha"): torch.tensor(float("nan"))}
        else:
            tensors[key] = tensors[key].clone().index_fill_(0, torch.tensor([0]), float("nan"))
        release.path("xv_lora").write_bytes(raw_safetensors(tensors, {}))
    return change


def _metadata(text: str):
    def change(release: Release) -> None:
        release.path("xv_lora").write_bytes(raw_safetensors(lora_tensors("xverse"),
                                                            {"__metadata__": {"lora_adapter_metadata": text}}))
    return change


def _config(**values):
    def change(release: Release) -> None:
        release.path("xv_config").write_text(json.dumps({**xv_files.TINY_CONFIG, **values}))
    return change


def _flux(**values):
    def change(release: Release) -> None:
        release.path("flux_config").write_text(json.dumps({**FLUX, **values}))
    return change


def _newline_key(release: Release) -> None:
    release.path("xv_lora").write_bytes(raw_safetensors({**lora_tensors("xverse"), "evil\nkey": torch.ones(1)}, {}))


# Each escaped before this change (a hang building 10**7 layers, OverflowError, ZeroDivisionError, a converted
# file with NaN, a two-line message, a string accepted as a size), or was accepted and is now refused.
@pytest.mark.parametrize("change, outcome", [
    (_config(layers=10 ** 7), r"layers must be an int in \[1, 1024\]"),
    (_config(width=2 ** 40, heads=1), r"width must be an int in \[1, 65536\]"),
    (_metadata(json.dumps({"lora_alpha": 10 ** 400, "r": 4})), None),            # unreadable: ignored, logged
    (_metadata(json.dumps({"lora_alpha": 4, "r": 0})), None),
    (_nan_in("alpha"), r"holds the alpha nan"),
    (_nan_in("lora_B"), r"holds NaN or infinite LoRA values"),
    (_newline_key, r"'evil\\nkey'"),
    (_flux(num_layers="4"), r"--transformer-config .*num_layers must be an integer in \[1, 1024\], got '4'"),
    (_flux(num_layers=10 ** 6), r"num_layers must be an integer in \[1, 1024\]"),
    (_flux(in_channels=2 ** 70), r"in_channels must be an integer in \[1, 65536\]"),
], ids=["layers", "width", "metadata-overflow", "metadata-rank-0", "nan-alpha", "nan-lora", "newline-key",
        "string-size", "huge-blocks", "huge-channels"])
def test_found_examples(release, change, outcome):
    release.reset()
    change(release)
    out = converted_or_ours(release, "xverse", ("--",))
    if outcome is None:
        assert out == 0
    else:
        assert isinstance(out, Exception) and re.search(outcome, str(out)), out


def test_converted_file_with_unreadable_source_metadata(release, converted):
    from safetensors import safe_open

    path = release.folder / "converted_source.safetensors"
    path.write_bytes(converted)
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    path.write_bytes(raw_safetensors(tensors, {"__metadata__": {**meta, "source": "{not json"}}))
    with pytest.raises(CheckpointError, match=r"is not JSON dict or null; the file is damaged"):
        load_xverse(path)
