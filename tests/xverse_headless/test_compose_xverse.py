"""End to end, headless: `refcomp convert xverse` then `refcomp compose --xverse`, alone and composed with
converted InstanceAssemble weights, on the tiny random FluxPipeline, CLIP and DINOv2 saved to disk
(tests/compose_fixtures.py) and tiny random files in both releases' exact formats."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from compose_fixtures import T5_DIM
from ia_files import lora_tensors as ia_lora_tensors
from ia_files import write_layout_pth, write_lora as write_ia_lora
from refcomp import cli
from refcomp.compose import ComposeOptions, compose_run
from refcomp.models import load_models
from refcomp_core.errors import LayoutError, UsageError
from refcomp_core.session import RefCompSession
from refcomp_core.xverse import PRESETS
from refcomp_core.xverse.spans import SpanNotFoundError
from xv_files import adapter_tensors, lora_tensors, write_adapter, write_lora

CLIP_VISION_WIDTH = 16          # compose_fixtures' CLIP vision hidden size (1024 for ViT-L/14)
PROMPT = "a cat and a dog under the tree"
RUN = dict(steps=4, seed=5, prompt=PROMPT)


def xverse_config(flux: dict) -> dict:
    """A tiny modulation_adapter/config.json for the tiny FLUX: out_dim = its hidden size, T5 and CLIP widths."""
    return {"_class_name": "CLIPModAdapter", "_diffusers_version": "0.32.2",
            "out_dim": flux["num_attention_heads"] * flux["attention_head_dim"], "width": 16, "pblock_width": 24,
            "layers": 2, "pblock_layers": 1, "heads": 2, "input_text_dim": T5_DIM,
            "input_image_dim": CLIP_VISION_WIDTH, "pblock_single_blocks": 0}


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """Both releases at tiny size, converted with `refcomp convert` for the tiny FLUX transformer."""
    root = tmp_path_factory.mktemp("releases")
    config_path = tiny.flux / "transformer" / "config.json"
    flux = json.loads(config_path.read_text())
    cfg = xverse_config(flux)
    write_adapter(root / "XVerse" / "modulation_adapter", config=cfg,
                  tensors=adapter_tensors(cfg, num_double=flux["num_layers"], seed=3))
    write_lora(root / "XVerse" / "lora.safetensors", lora_tensors(flux, rank=2, seed=4))
    write_layout_pth(root / "layout.pth", flux, scale=0.5)
    write_ia_lora(root / "ia_lora.safetensors", ia_lora_tensors(flux, rank=2))
    out = {"xverse": root / "xverse.safetensors", "ia": root / "ia.safetensors", "root": root}
    assert cli.main(["convert", "xverse", "--adapter", str(root / "XVerse" / "modulation_adapter"), "--lora",
                     str(root / "XVerse" / "lora.safetensors"), "--out", str(out["xverse"]),
                     "--transformer-config", str(config_path)]) == 0
    assert cli.main(["convert", "instanceassemble", "--layout", str(root / "layout.pth"), "--lora",
                     str(root / "ia_lora.safetensors"), "--out", str(out["ia"]), "--transformer-config",
                     str(config_path)]) == 0
    return out


@pytest.fixture(scope="module")
def models(tiny, files):
    """The same FluxPipeline with XVerse alone, InstanceAssemble alone, and both."""
    xv = load_models(tiny.flux, xverse=files["xverse"], clip=tiny.clip)
    return {"xv": xv, "ia": load_models(xv.pipe, adapter=files["ia"], clip=tiny.clip),
            "both": load_models(xv.pipe, adapter=files["ia"], xverse=files["xverse"], clip=tiny.clip)}


def layout(depths=("fg", "fg", "bg"), captions=("a cat", "a dog", "the tree"), alpha=(None, None, None)) -> dict:
    boxes = ([0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0])
    return {"version": 1, "width": 64, "height": 64, "instances": [
        {"box": b, "ref": i, "caption": c, "depth": d, "alpha": a}
        for i, (b, c, d, a) in enumerate(zip(boxes, captions, depths, alpha))]}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def vanilla(pipe, **kw) -> np.ndarray:
    return pixels(pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=kw.get("steps", RUN["steps"]),
                       max_sequence_length=128, guidance_scale=3.5,
                       generator=torch.Generator().manual_seed(RUN["seed"])).images[0])


def test_convert_then_compose_from_the_command_line(tiny, files, tmp_path, caplog, one_thread):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(layout()))
    out = tmp_path / "out.png"
    base = ["compose", "--layout", str(path), "--refs", str(tiny.refs), "--flux", str(tiny.flux), "--xverse",
            str(files["xverse"]), "--clip", str(tiny.clip), "--steps", "4", "--seed", "5", "--device", "cpu"]
    with caplog.at_level(logging.INFO):
        assert cli.main([*base, "--out", str(out), "--prompt", PROMPT]) == 0
    assert "3 identity reference(s)" in caplog.text and "256 tokens each: 768 reference tokens" in caplog.text
    with Image.open(out) as image:
        composed = pixels(image)
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(str(tiny.flux), local_files_only=True)
    assert np.abs(composed - vanilla(pipe)).max() > 0                   # XVerse changed the image
    assert (tmp_path / "out_layout.png").is_file()

    caplog.clear()                                                      # a caption word missing from the prompt
    missing = tmp_path / "missing.png"
    with caplog.at_level(logging.ERROR):
        assert cli.main([*base, "--out", str(missing), "--prompt", "a cat and a bird under the tree"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "'dog'" in errors[0] and "instances[1]" in errors[0]
    assert "Traceback" not in caplog.text and not missing.exists()


def test_the_vae_skip_schedule_is_applied(tiny, models, monkeypatch, one_thread):
    """28 steps: the reference stream runs on exactly the steps XVerse's schedule keeps (on the timestep
    value: 0.2 t0 < t < 0.95 t0, t0 the first step's), in every block of those steps, and on no other."""
    seen: dict[float, set] = {}                                 # timestep -> refs_on of each block call
    real = RefCompSession._xverse_pathway

    def spy(self, block, rows, device, *, double):
        pathway = real(self, block, rows, device, double=double)
        seen.setdefault(self.timestep, set()).add(pathway.refs_on)
        return pathway

    monkeypatch.setattr(RefCompSession, "_xverse_pathway", spy)
    compose_run(layout(), tiny.refs, models=models["xv"], **{**RUN, "steps": 28})
    timesteps = list(seen)
    assert timesteps == pytest.approx((models["xv"].pipe.scheduler.timesteps / 1000).tolist())
    assert all(len(v) == 1 for v in seen.values())
    off = {i for i, on in enumerate(seen.values()) if on == {False}}
    assert off == set(PRESETS["cli"].skip_steps(timesteps)) and 0 < len(off) < 28
    assert {0, 27} <= off                                       # both ends of the schedule are skipped


def test_composed_with_instanceassemble(tiny, models, caplog, one_thread):
    """Every box through InstanceAssemble's layout pathway, the fg boxes with a reference also through
    XVerse: the image differs from either method alone."""
    with caplog.at_level(logging.INFO):
        both = compose_run(layout(), tiny.refs, models=models["both"], **RUN)
    assert "2 identity reference(s)" in caplog.text and "'the tree'" not in caplog.text.split("identity")[-1]
    assert both.is_fg == [True, True, False] and both.alpha == [1.0, 1.0, 0.0]
    ia = compose_run(layout(), tiny.refs, models=models["ia"], max_sequence_length=128, **RUN)
    xv = compose_run(layout(), tiny.refs, models=models["xv"], **RUN)
    xv_two = compose_run(layout(depths=("fg", "fg", "bg")), tiny.refs, models=models["xv"], **RUN)
    for other in (ia, xv, xv_two):
        assert np.abs(pixels(both.images[0]) - pixels(other.images[0])).max() > 0


def test_no_identity_boxes_equal_the_instanceassemble_run_exactly(tiny, models, caplog, one_thread):
    """No box with a reference has alpha >= 0.5 (depths mg / bg / none, a manual alpha below 0.5):
    XVerse stays off entirely and the image is InstanceAssemble's, bit for bit."""
    doc = layout(depths=("mg", None, "fg"), alpha=(None, None, 0.3))
    with caplog.at_level(logging.WARNING):
        both = compose_run(doc, tiny.refs, models=models["both"], **RUN)
    assert "XVerse is off" in caplog.text
    ia = compose_run(doc, tiny.refs, models=models["ia"], max_sequence_length=128, **RUN)
    assert np.array_equal(pixels(both.images[0]), pixels(ia.images[0]))
    flux = vanilla(models["ia"].pipe)
    assert np.abs(pixels(ia.images[0]) - flux).max() > 0                # the check can fail: IA acts
    manual = compose_run(layout(depths=("bg", None, "bg"), alpha=(0.8, None, None)), tiny.refs,
                         models=models["both"], **RUN)                  # a manual alpha >= 0.5 wins over depth
    assert manual.is_fg == [True, False, False]


def test_options_each_change_the_image(tiny, models, one_thread):
    """--id-refs (lambda 3 instead of 5), --xverse-preset demo (g = 0.85) and --xverse-confine act."""
    base = compose_run(layout(), tiny.refs, models=models["xv"], **RUN)
    runs = [compose_run(layout(), tiny.refs, models=models["xv"], **RUN, **opt)
            for opt in ({"id_refs": (1,)}, {"xverse_preset": "demo"}, {"xverse_confine": True})]
    images = [pixels(r.images[0]) for r in [base, *runs]]
    for i in range(len(images)):
        for j in range(i):
            assert np.abs(images[i] - images[j]).max() > 0, (i, j)
    again = compose_run(layout(), tiny.refs, models=models["xv"], **RUN)
    assert np.array_equal(pixels(again.images[0]), images[0])          # seeded: the VAE sample repeats


def test_a_refcomp_checkpoint_predicts_which_boxes_get_identity(tiny, files, models, caplog, one_thread):
    both = load_models(models["xv"].pipe, adapter=tiny.adapter_random, xverse=files["xverse"], clip=tiny.clip,
                       dino=tiny.dino)
    with caplog.at_level(logging.INFO):
        result = compose_run(layout(depths=(None, None, None), alpha=(0.9, 0.2, None)), tiny.refs, models=both,
                             **RUN)
    assert result.alpha[:2] == pytest.approx([0.9, 0.2]) and 0 < result.alpha[2] < 1      # the third is predicted
    assert result.is_fg == [True, False, result.alpha[2] >= 0.5]
    assert f"{1 + result.is_fg[2]} identity reference(s)" in caplog.text


def test_identity_inputs_are_refused_clearly(tiny, files, models):
    too_many = {"version": 1, "width": 64, "height": 64, "instances": [
        {"box": [0.0, 0.0, 0.5, 0.5], "ref": i % 3, "caption": "a cat", "depth": "fg"} for i in range(9)]}
    with pytest.raises(LayoutError, match=r"9 boxes go through XVerse's identity pathway .* more than 8"):
        compose_run(too_many, tiny.refs, models=models["both"], **RUN)
    with pytest.raises(LayoutError, match=r"9 boxes"):                  # XVerse alone: refused before loading
        compose_run(too_many, tiny.refs, flux=tiny.flux / "nowhere", xverse=files["xverse"], clip=tiny.clip, **RUN)
    no_caption = layout(captions=("a cat", None, "the tree"))
    with pytest.raises(LayoutError, match=r"layout\.instances\[1\]\.caption: XVerse binds"):
        compose_run(no_caption, tiny.refs, models=models["xv"], **RUN)
    with pytest.raises(SpanNotFoundError, match=r"instances\[0\].*'cat' is not in the prompt"):
        compose_run(layout(), tiny.refs, models=models["xv"], **{**RUN, "prompt": "a dog under the tree"})
    with pytest.raises(UsageError, match=r"--id-refs: 3 is not a reference index"):
        compose_run(layout(), tiny.refs, models=models["xv"], id_refs=(3,), **RUN)
    with pytest.raises(UsageError, match=r"--prompt: ENT4 names reference 4, but there are 2"):
        compose_run(layout(), tiny.refs, models=models["both"], **{**RUN, "prompt": "ENT4 under the tree"})
    with pytest.raises(ValueError, match=r"--clip: XVerse reads each reference with CLIP"):
        load_models(models["xv"].pipe, xverse=files["xverse"])
    with pytest.raises(Exception, match=r"--xverse: .*a RefComp checkpoint of kind"):
        load_models(models["xv"].pipe, xverse=tiny.adapter_random, clip=tiny.clip)


def test_entities_and_the_prompt_length(tiny, models, one_thread):
    """ENT1, ENT2 stand for the identity boxes' captions (XVerse's convention); the prompt is T5-encoded
    at exactly 128 tokens."""
    ent = compose_run(layout(), tiny.refs, models=models["both"], **{**RUN, "prompt": "ENT1 and ENT2 under the tree"})
    plain = compose_run(layout(), tiny.refs, models=models["both"], **RUN)          # RUN's prompt, written out
    assert np.array_equal(pixels(ent.images[0]), pixels(plain.images[0]))
    assert ComposeOptions().sequence_length(True) == 128 and ComposeOptions().sequence_length(False) == 512
    assert ComposeOptions(max_sequence_length=256).sequence_length(False) == 256
    with pytest.raises(UsageError, match="exactly 128 T5 tokens"):
        ComposeOptions(max_sequence_length=256).sequence_length(True)
    with pytest.raises(UsageError, match="--xverse-preset"):
        ComposeOptions(xverse_preset="gradio")


def test_reference_inputs_are_prepared_as_xverse_does(tiny, models, monkeypatch, one_thread):
    """What reaches XVerse's composition, against §2.4 computed here with the pipeline's and CLIP's own
    parts: caption T5 states at 128 tokens, CLIP hidden_states[-2] of the white-padded square at the vision
    input side, a VAE *sample* of it at 256 px from a generator seeded with --seed (references in box
    order), shifted, scaled and packed by diffusers' own FluxPipeline._pack_latents."""
    import refcomp.xverse_inputs as xverse_inputs

    captured = {}
    real = xverse_inputs.build_run

    def spy(adapter, references, binding, preset, **kw):
        captured.update(references=references, binding=binding, preset=preset, confine=kw.get("confine"))
        return real(adapter, references, binding, preset, **kw)

    monkeypatch.setattr(xverse_inputs, "build_run", spy)
    doc = layout(depths=("fg", "bg", "fg"))
    compose_run(doc, tiny.refs, models=models["both"], id_refs=(2,), xverse_confine=True, **RUN)
    pipe, enc = models["both"].pipe, models["both"].encoders
    refs = captured["references"]
    assert [r.is_id for r in refs] == [False, True] and captured["preset"] is PRESETS["cli"]
    # the tiny T5 has single-letter pieces: "▁a ▁c a t ▁a n d ▁a ▁d o g ▁u n d e r ▁t h e ▁t r e e </s>"
    assert [(s.word, s.prompt) for s in captured["binding"].spans] == [("cat", (1, 4)), ("the tree", (16, 23))]
    generator = torch.Generator().manual_seed(RUN["seed"])
    images = [Image.open(tiny.refs / name).convert("RGBA") for name in ("a_cat.png", "c_tree.jpg")]
    with torch.no_grad():
        for ref, image, caption in zip(refs, images, ("a cat", "the tree")):
            ids = pipe.tokenizer_2(caption, padding="max_length", max_length=128, truncation=True,
                                   return_tensors="pt").input_ids
            torch.testing.assert_close(ref.txt, pipe.text_encoder_2(ids).last_hidden_state, rtol=0, atol=0)
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, image).convert("RGB")
            side = max(rgb.size)
            square = Image.new("RGB", (side, side), "white")
            square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
            px = np.asarray(square.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255
            px = (px - np.array(enc.clip_processor.image_mean)) / np.array(enc.clip_processor.image_std)
            pixel_values = torch.tensor(px, dtype=torch.float32).permute(2, 0, 1)[None]
            want = enc.clip(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
            torch.testing.assert_close(ref.img, want, rtol=0, atol=1e-6)
            vae_in = torch.tensor(np.asarray(square.resize((256, 256), Image.BICUBIC), dtype=np.float32) / 255)
            z = pipe.vae.encode(vae_in.permute(2, 0, 1)[None] * 2 - 1).latent_dist.sample(generator=generator)
            z = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
            packed = pipe._pack_latents(z, 1, z.shape[1], z.shape[2], z.shape[3])[0]
            assert ref.latents.shape == (256, 64)
            torch.testing.assert_close(ref.latents, packed, rtol=0, atol=0)
    mode = pipe.vae.encode(vae_in.permute(2, 0, 1)[None] * 2 - 1).latent_dist.mode()
    assert not torch.allclose(z, mode)                                  # a sample, not the mode
    confine = captured["confine"]                                       # (16 tokens, 2): the 4 x 4 grid
    assert confine.shape == (16, 2) and confine[:, 0].sum() == 4 and confine[:, 1].sum() == 8
    assert bool(confine[0, 0]) and not bool(confine[0, 1]) and bool(confine[15, 1])


def test_files_that_do_not_fit_name_the_flag(tiny, files, models):
    import dataclasses

    from refcomp.xverse_inputs import check_fits
    from refcomp_core.errors import CheckpointError
    from refcomp_core.released.xverse import read_xverse_info

    info = read_xverse_info(files["xverse"])
    pipe, clip = models["xv"].pipe, models["xv"].encoders.clip
    check_fits(info, pipe, clip)
    for change, pattern in (({"input_image_dim": 99}, r"CLIP vision width of 99, but --clip has 16"),
                            ({"input_text_dim": 7}, r"T5 width \(text_encoder_2\) of 7, but --flux has 24"),
                            ({"num_double_blocks": 3}, r"double blocks of 3, but --flux has 2")):
        wrong = dataclasses.replace(info, config=dataclasses.replace(info.config, lora={}, **change))
        with pytest.raises(CheckpointError, match=pattern):
            check_fits(wrong, pipe, clip)


def test_the_cli_presets_are_the_cores():
    assert cli.XVERSE_PRESETS == tuple(PRESETS)
