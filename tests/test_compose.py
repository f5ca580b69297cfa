"""Headless compose and the `refcomp` command, on tiny random models saved to disk
(the real local loading code runs; nothing is downloaded)."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compose_fixtures import T5_LEN, TinyModels, tiny_layout
from refcomp import cli
from refcomp.compose import compose, compose_run
from refcomp.models import fresh_adapter, load_models
from refcomp.preview import draw_layout
from refcomp.refs import load_references
from refcomp_core import parse_layout
from refcomp_core.errors import CheckpointError, LayoutError, MissingEncoderError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RUN = dict(steps=3, max_sequence_length=T5_LEN, prompt="a cat in the tree", seed=7)


@pytest.fixture(scope="module")
def models_random(tiny):
    return load_models(tiny.flux, adapter=tiny.adapter_random, clip=tiny.clip, dino=tiny.dino)


@pytest.fixture(scope="module")
def models_fresh(tiny):
    return load_models(tiny.flux, adapter=tiny.adapter_fresh, clip=tiny.clip, dino=tiny.dino)


def write_layout(folder: Path, doc: dict, name: str = "layout.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def vanilla(pipe, width: int, height: int) -> Image.Image:
    return pipe(prompt=RUN["prompt"], height=height, width=width, num_inference_steps=RUN["steps"],
                max_sequence_length=T5_LEN, guidance_scale=3.5,
                generator=torch.Generator().manual_seed(RUN["seed"])).images[0]


def cli_args(tiny: TinyModels, layout: Path, out: Path, *extra: str) -> list[str]:
    return ["compose", "--layout", str(layout), "--refs", str(tiny.refs), "--flux", str(tiny.flux),
            "--clip", str(tiny.clip), "--dino", str(tiny.dino), "--out", str(out), "--steps", "3",
            "--max-sequence-length", str(T5_LEN), "--device", "cpu", "--seed", "3", *extra]


def test_compose_end_to_end_rounds_size_and_reports_roles(tiny, models_random):
    result = compose_run(tiny_layout(width=70, height=50), tiny.refs, models=models_random, **RUN)
    assert len(result.images) == 1 and result.images[0].size == (64, 48)     # rounded to multiples of 16
    assert (result.layout.width, result.layout.height) == (64, 48)
    assert result.alpha[:2] == pytest.approx([0.9, 0.1]) and result.alpha[3] == 0.0
    assert result.is_fg[0] and not result.is_fg[1] and not result.is_fg[3]
    overlay = result.overlay()
    assert overlay.size == (64, 48) and np.any(pixels(overlay) != pixels(result.images[0]))
    assert pixels(result.images[0]).std() > 5          # a real picture, not a flat colour


def test_compose_function_returns_pil_images_from_folders(tiny):
    images = compose(tiny_layout(), str(tiny.refs), flux=tiny.flux, adapter=tiny.adapter_random, clip=tiny.clip,
                     dino=tiny.dino, **RUN)
    assert [im.size for im in images] == [(64, 64)] and all(isinstance(im, Image.Image) for im in images)


def test_fresh_adapter_reproduces_vanilla_flux(tiny, models_fresh, models_random):
    layout = tiny_layout()
    base = pixels(vanilla(models_fresh.pipe, 64, 64))
    fresh = compose_run(layout, tiny.refs, models=models_fresh, layout_window=(0.0, 1.0), **RUN)
    assert np.array_equal(pixels(fresh.images[0]), base)
    initialised = compose_run(layout, tiny.refs, models=load_models(models_fresh.pipe, init_adapter=True,
                                                                    clip=tiny.clip, dino=tiny.dino), **RUN)
    assert np.array_equal(pixels(initialised.images[0]), base)
    trained = compose_run(layout, tiny.refs, models=models_random, **RUN)     # the same check can fail
    assert np.abs(pixels(trained.images[0]) - base).mean() > 1.0


def test_encoders_run_once_and_progress_advances_per_step(tiny, models_random, monkeypatch):
    import refcomp.compose as compose_module

    calls = {"clip": 0, "dino": 0, "transformer": 0}
    progress: list[float] = []
    hooks = [models_random.encoders.clip.register_forward_hook(lambda *a: calls.__setitem__("clip", calls["clip"] + 1)),
             models_random.encoders.dino.register_forward_hook(lambda *a: calls.__setitem__("dino", calls["dino"] + 1))]
    real_patch = compose_module.patch_flux

    def spying_patch(transformer, session):
        def pre(*_):
            calls["transformer"] += 1
            progress.append(session.progress)
        hooks.append(transformer.register_forward_pre_hook(pre))
        return real_patch(transformer, session)

    monkeypatch.setattr(compose_module, "patch_flux", spying_patch)
    try:
        compose_run(tiny_layout(), tiny.refs, models=models_random, **{**RUN, "steps": 4})
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"clip": 1, "dino": 1, "transformer": 4}
    assert progress == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_zero_instances_is_vanilla_with_warning(tiny, models_random, caplog):
    layout = {"version": 1, "width": 64, "height": 64, "instances": []}
    with caplog.at_level(logging.WARNING):
        result = compose_run(layout, None, models=models_random, **RUN)
    assert "no instances" in caplog.text
    assert np.array_equal(pixels(result.images[0]), pixels(vanilla(models_random.pipe, 64, 64)))


def test_bad_layout_and_reference_count_name_the_field(tiny, models_random):
    doc = tiny_layout()
    doc["instances"][2]["ref"] = 5
    with pytest.raises(LayoutError, match=r"layout\.instances\[2\]\.ref.*out of range"):
        compose_run(doc, tiny.refs, models=models_random, **RUN)
    doc = tiny_layout()
    for inst in doc["instances"][1:]:
        inst["ref"] = None                   # only ref 0 used, but the folder holds 3 images
    with pytest.raises(LayoutError, match=r"--refs: 3 reference image\(s\).*exactly 1"):
        compose_run(doc, tiny.refs, models=models_random, **RUN)
    doc = tiny_layout()
    doc["instances"][0]["box"] = [0.0, 0.0, 2.0, 0.5]
    with pytest.raises(LayoutError, match=r"layout\.instances\[0\]\.box"):
        compose_run(doc, tiny.refs, models=models_random, **RUN)


def test_missing_dino_for_fg_is_a_clear_error(tiny, models_random):
    no_dino = load_models(models_random.pipe, adapter=models_random.adapter, clip=tiny.clip)
    with pytest.raises(MissingEncoderError, match="DINOv2"):
        compose_run(tiny_layout(), tiny.refs, models=no_dino, **RUN)


def test_pickle_adapter_is_refused(tiny, tmp_path):
    bad = tmp_path / "adapter.pt"
    with open(bad, "wb") as f:
        pickle.dump({"alpha.net.0.weight": [1.0, 2.0]}, f)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_models(tiny.flux, adapter=bad, clip=tiny.clip, dino=tiny.dino)


def test_adapter_encoder_width_mismatch_names_the_flag(tiny, models_random):
    wrong = fresh_adapter(models_random.pipe.transformer, models_random.encoders, text_dim=20, clip_dim=7)
    with pytest.raises(CheckpointError, match="--clip.*7.*12"):
        load_models(models_random.pipe, adapter=wrong, clip=tiny.clip, dino=tiny.dino)


def test_adapter_is_required_unless_init(tiny):
    with pytest.raises(ValueError, match="--init-adapter"):
        load_models(tiny.flux, clip=tiny.clip)


def test_cli_main_writes_image_and_overlay(tiny, tmp_path):
    layout = write_layout(tmp_path, tiny_layout(width=64, height=48))
    out = tmp_path / "sub" / "out.png"
    assert cli.main(cli_args(tiny, layout, out, "--adapter", str(tiny.adapter_random), "--strength", "0.8",
                             "--layout-window", "0", "0.5", "--modulation-window", "0.1", "1")) == 0
    with Image.open(out) as image, Image.open(tmp_path / "sub" / "out_layout.png") as overlay:
        assert image.size == overlay.size == (64, 48)


def test_cli_errors_exit_2_with_message(tiny, tmp_path, caplog):
    doc = tiny_layout()
    doc["instances"][1]["depth"] = "middle"
    layout = write_layout(tmp_path, doc)
    with caplog.at_level(logging.ERROR):
        assert cli.main(cli_args(tiny, layout, tmp_path / "o.png", "--init-adapter")) == 2
    assert "layout.instances[1].depth" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    args = [a for a in cli_args(tiny, write_layout(tmp_path, tiny_layout(), "ok.json"), tmp_path / "o.png",
                                "--init-adapter") if a not in ("--dino", str(tiny.dino))]
    with caplog.at_level(logging.ERROR):
        assert cli.main(args) == 2
    assert "DINOv2" in caplog.text and "--dino" in caplog.text
    caplog.clear()
    pickled = tmp_path / "adapter.ckpt"
    pickled.write_bytes(pickle.dumps({"x": 1}))
    with caplog.at_level(logging.ERROR):
        assert cli.main(cli_args(tiny, tmp_path / "ok.json", tmp_path / "o.png", "--adapter", str(pickled))) == 2
    assert "safetensors" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):                 # neither --adapter nor --init-adapter
        assert cli.main(["compose", "--layout", str(layout), "--flux", str(tiny.flux), "--out", "x.png"]) == 2
    assert "one of --adapter, --init-adapter or --xverse is required" in caplog.text


def test_console_script_compose(tiny, tmp_path):
    script = Path(sys.executable).parent / "refcomp"
    assert script.is_file(), "the refcomp console script is not installed (pip install -e .)"
    layout = write_layout(tmp_path, tiny_layout())
    out = tmp_path / "cli.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([str(script), *cli_args(tiny, layout, out, "--adapter", str(tiny.adapter_random))],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and (tmp_path / "cli_layout.png").is_file()
    with Image.open(out) as image:
        assert image.size == (64, 64)


def test_passthrough_commands(monkeypatch, caplog):
    seen = []
    fake = types.ModuleType("refcomp_fake_train")
    fake.main = lambda argv: seen.append(list(argv)) or 0
    monkeypatch.setitem(sys.modules, "refcomp_fake_train", fake)
    monkeypatch.setitem(cli.PASSTHROUGH, "train", (("refcomp_missing_candidate", "refcomp_fake_train"), "train"))
    assert cli.main(["train", "--config", "c.yaml", "--resume", "latest"]) == 0
    assert seen == [["--config", "c.yaml", "--resume", "latest"]]
    monkeypatch.setitem(cli.PASSTHROUGH, "toy", (("refcomp_no_such_module.toy",), "toy"))
    with caplog.at_level(logging.ERROR):
        assert cli.main(["toy", "--steps", "2"]) == 2
    assert "refcomp_no_such_module.toy" in caplog.text and "unavailable" in caplog.text


def test_references_sorted_and_rgba_on_white(tiny):
    images = load_references(tiny.refs)
    assert [im.size for im in images] == [(30, 40), (24, 24), (32, 32)]     # a_cat, b_dog, c_tree; txt ignored
    assert all(im.mode == "RGB" for im in images)
    assert images[1].getpixel((5, 3)) == (255, 255, 255)                     # transparent -> white
    with pytest.raises(FileNotFoundError, match="--refs"):
        load_references(tiny.refs / "missing")


def test_draw_layout_marks_boxes():
    layout = parse_layout(tiny_layout(width=256, height=256))
    base = Image.new("RGB", (256, 256), (128, 128, 128))
    drawn = draw_layout(base, layout, alpha=[0.9, 0.1, 0.4, 0.0], is_fg=[True, False, False, False])
    diff = np.abs(pixels(drawn) - pixels(base)).sum(axis=2)
    assert drawn.size == base.size and diff[10, 10] > 0 and diff[-2, -2] > 0    # inside boxes 0 and 1
    with pytest.raises(ValueError, match="alpha"):
        draw_layout(base, layout, alpha=[0.5])
