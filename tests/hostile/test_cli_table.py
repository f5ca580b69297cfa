"""`refcomp` with bad arguments (issue 12): one table, one row per mistake. Every row
must end with exit status 2 and exactly one error line naming the flag or file (never a
traceback), before FLUX is loaded unless the row says otherwise, and write no image."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

import refcomp.models
from compose_fixtures import T5_LEN, TinyModels, tiny_layout
from hostile_strategies import png_declaring
from refcomp import cli


class Case:
    """Files of one row: `tmp` is its own folder, `args` the valid command it starts from."""

    def __init__(self, tiny: TinyModels, tmp: Path) -> None:
        self.tiny, self.tmp = tiny, tmp
        self.layout = tmp / "layout.json"
        self.layout.write_text(json.dumps(tiny_layout()))
        self.out = tmp / "out" / "image.png"
        self.args = {"--layout": str(self.layout), "--refs": str(tiny.refs), "--flux": str(tiny.flux),
                     "--adapter": str(tiny.adapter_random), "--clip": str(tiny.clip), "--dino": str(tiny.dino),
                     "--out": str(self.out), "--steps": "2", "--max-sequence-length": str(T5_LEN),
                     "--device": "cpu"}

    def file(self, name: str, data: bytes | str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def folder(self, name: str) -> str:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return str(self.tmp / name)

    def argv(self, **changes: str | list[str] | None) -> list[str]:
        """`compose` with flags changed (`steps="0"`), removed (None) or given two values (a list)."""
        args = dict(self.args)
        for key, value in changes.items():
            args["--" + key.replace("_", "-")] = value
        out = ["compose"]
        for flag, value in args.items():
            if value is not None:
                out += [flag, *(value if isinstance(value, list) else [value])]
        return out


def refs_with_broken_image(c: Case) -> str:
    folder = Path(c.folder("refs_broken"))
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"r{i}.png")
    (folder / "r1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return str(folder)


def refs_with_huge_image(c: Case) -> str:
    folder = Path(c.folder("refs_huge"))
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"r{i}.png")
    (folder / "r2.png").write_bytes(png_declaring(30000, 30000))
    return str(folder)


def dino_without_weights(c: Case) -> str:
    folder = Path(c.folder("dino_no_weights"))
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(c.tiny.dino / name, folder / name)
    return str(folder)


def truncated_adapter(c: Case) -> str:
    return c.file("adapter.safetensors", c.tiny.adapter_random.read_bytes()[:-64])


def out_under_a_file(c: Case) -> str:
    return str(Path(c.file("a_file", "x")) / "image.png")


def overlay_is_a_folder(c: Case) -> str:
    c.folder("out/image_layout.png")
    return str(c.out)


# (id, argv builder, expected message (regex), refused before FLUX loads)
ROWS: list[tuple[str, Callable[[Case], list[str]], str, bool]] = [
    ("no command", lambda c: [], r"required: COMMAND \(see `refcomp --help`\)", True),
    ("unknown command", lambda c: ["draw"], r"invalid choice: 'draw'", True),
    ("missing --layout", lambda c: c.argv(layout=None), r"required: --layout", True),
    ("--adapter and --init-adapter", lambda c: c.argv() + ["--init-adapter"], r"--init-adapter: not allowed with",
     True),
    ("--steps not a number", lambda c: c.argv(steps="x"), r"--steps: invalid int value: 'x'", True),
    ("--steps 0", lambda c: c.argv(steps="0"), r"--steps: expected an integer in \[1, 1000\], got 0", True),
    ("--steps huge", lambda c: c.argv(steps="10000000"), r"--steps: expected an integer in \[1, 1000\]", True),
    ("--guidance nan", lambda c: c.argv(guidance="nan"), r"--guidance: expected a finite number .* got nan", True),
    ("--guidance inf", lambda c: c.argv(guidance="inf"), r"--guidance: expected a finite number", True),
    ("--guidance negative", lambda c: c.argv(guidance="-1"), r"--guidance: .*\[0, 100\]", True),
    ("--strength 11", lambda c: c.argv(strength="11"), r"^--strength: expected a finite number in \[0, 10\]", True),
    ("--strength nan", lambda c: c.argv(strength="nan"), r"^--strength: ", True),
    ("--layout-window reversed", lambda c: c.argv(layout_window=["0.5", "0.2"]),
     r"--layout-window: START 0.5 is after END 0.2", True),
    ("--layout-window not a number", lambda c: c.argv(layout_window=["x", "1"]),
     r"argument --layout-window: 'x' is not a number", True),
    ("--modulation-window over 1", lambda c: c.argv(modulation_window=["0", "2"]),
     r"argument --modulation-window: 2 is outside \[0, 1\]", True),
    ("--seed negative", lambda c: c.argv(seed="-1"), r"--seed: expected an integer in \[0, ", True),
    ("--max-sequence-length 9999", lambda c: c.argv(max_sequence_length="9999"), r"--max-sequence-length: .*512", True),
    ("--prompt lone surrogate", lambda c: c.argv(prompt="a \udc80 cat"), r"--prompt: expected plain text", True),
    ("--device cuda without CUDA", lambda c: c.argv(device="cuda"), r"--device cuda: no CUDA device", True),
    ("--out is a folder", lambda c: c.argv(out=c.folder("an_output_folder")), r"--out: .*an_output_folder is a folder",
     True),
    ("--out is a folder named .png", lambda c: c.argv(out=c.folder("renders.png")), r"--out: .*renders.png is a folder",
     True),
    ("--out overlay is a folder", lambda c: c.argv(out=overlay_is_a_folder(c)), r"image_layout.png is a folder", True),
    ("--out without image suffix", lambda c: c.argv(out=str(c.tmp / "image.txt")), r"--out: .* needs an image suffix",
     True),
    ("--out under a file", lambda c: c.argv(out=out_under_a_file(c)), r"--out: .*a_file is a file", True),
    ("--layout missing", lambda c: c.argv(layout=str(c.tmp / "nope.json")), r"--layout: layout file not found", True),
    ("--layout is a folder", lambda c: c.argv(layout=c.folder("a_layout_dir")), r"--layout: is a folder", True),
    ("--layout not UTF-8", lambda c: c.argv(layout=c.file("latin1.json", '{"version": 1, "note": "\xe9"}'
                                                          .encode("latin-1"))),
     r"--layout .*latin1.json: layout: the text is not valid UTF-8", True),
    ("--layout nested", lambda c: c.argv(layout=c.file("deep.json", "[" * 100000)),
     r"--layout .*deep.json: layout: the JSON is nested too deeply", True),
    ("--layout huge canvas", lambda c: c.argv(layout=c.file("big.json", json.dumps(
        {**tiny_layout(), "width": 10 ** 7}))), r"--layout .*big.json: layout.width: .*8192", True),
    ("--layout with a NaN alpha", lambda c: c.argv(layout=c.file("nan.json", json.dumps(tiny_layout()).replace(
        '"alpha": 0.9', '"alpha": NaN'))), r"layout.instances\[0\].alpha", True),
    ("--refs missing", lambda c: c.argv(refs=str(c.tmp / "no_refs")), r"--refs: reference folder not found", True),
    ("--refs broken image", lambda c: c.argv(refs=refs_with_broken_image(c)),
     r"--refs: cannot read the image .*r1.png", True),
    ("--refs with a 30000x30000 image", lambda c: c.argv(refs=refs_with_huge_image(c)),
     r"--refs: the image .*r2.png declares more pixels than the 67-megapixel limit", True),
    ("--flux missing", lambda c: c.argv(flux=str(c.tmp / "no_flux")), r"--flux: folder not found", True),
    ("--flux damaged model_index.json",
     lambda c: c.argv(flux=str(Path(c.file("flux/model_index.json", "{oops")).parent)),
     r"--flux: .*model_index.json is not readable JSON", True),
    ("--flux another pipeline", lambda c: c.argv(flux=str(Path(c.file("sd/model_index.json", json.dumps(
        {"_class_name": "StableDiffusionPipeline"}))).parent)), r"--flux: .*'StableDiffusionPipeline' pipeline", True),
    ("--adapter truncated", lambda c: c.argv(adapter=truncated_adapter(c)), r"adapter.safetensors", True),
    ("--adapter missing", lambda c: c.argv(adapter=str(c.tmp / "none.safetensors")), r"checkpoint not found", True),
    ("--dino is a CLIP folder", lambda c: c.argv(dino=str(c.tiny.clip)),
     r"--dino: .* holds a 'clip_vision_model' model .*not DINOv2", True),
    ("--clip is a DINOv2 folder", lambda c: c.argv(clip=str(c.tiny.dino)), r"--clip: .* holds a 'dinov2' model", True),
    ("--dino without weights", lambda c: c.argv(dino=dino_without_weights(c)), r"--dino: cannot load DINOv2", False),
    # XVerse (`--xverse FILE` alone or with --adapter)
    ("no --adapter nor --xverse", lambda c: c.argv(adapter=None),
     r"one of --adapter, --init-adapter or --xverse is required", True),
    ("--xverse-preset unknown", lambda c: c.argv(xverse_preset="gradio"),
     r"argument --xverse-preset: invalid choice: 'gradio'", True),
    ("--id-refs not indices", lambda c: c.argv(id_refs="a,b"),
     r"argument --id-refs: 'a,b' is not a comma-separated list of reference indices", True),
    ("--id-refs out of range", lambda c: c.argv(xverse=str(c.tmp / "x.safetensors"), max_sequence_length=None,
                                                id_refs="0,7"), r"--id-refs: 7 is not a reference index", True),
    ("--xverse with --max-sequence-length 16", lambda c: c.argv(xverse=str(c.tmp / "x.safetensors")),
     r"--max-sequence-length: XVerse encodes the prompt at exactly 128 T5 tokens", True),
    ("--xverse missing", lambda c: c.argv(xverse=str(c.tmp / "none.safetensors"), max_sequence_length=None),
     r"--xverse: converted XVerse file not found", True),
    ("--xverse is a RefComp checkpoint", lambda c: c.argv(xverse=str(c.tiny.adapter_random), max_sequence_length=None),
     r"--xverse: .*a RefComp checkpoint of kind 'adapter', not converted XVerse weights", True),
    ("--xverse, 9 identity boxes", lambda c: c.argv(xverse=str(c.tmp / "x.safetensors"), max_sequence_length=None,
                                                    adapter=None, layout=c.file("nine.json", json.dumps(
        {"version": 1, "width": 64, "height": 64, "instances": [
            {"box": [0, 0, 0.5, 0.5], "ref": i % 3, "caption": "a cat"} for i in range(9)]}))),
     r"layout: 9 boxes go through XVerse's identity pathway .* more than 8", True),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_argument(row, tiny, tmp_path, monkeypatch, caplog, capsys):
    name, build, expected, before_models = row
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if before_models:
        def no_flux(*args, **kwargs):
            raise AssertionError("FLUX was loaded before the bad input was refused")
        monkeypatch.setattr(refcomp.models, "load_flux", no_flux)
    case = Case(tiny, tmp_path)
    argv = build(case)
    with caplog.at_level(logging.INFO):
        code = cli.main(argv)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2, f"exit {code}: {[r.getMessage() for r in errors]}"
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    import re
    assert re.search(expected, message.removeprefix("error: ")), message
    assert "Controls." not in message and "RefCompConfig" not in message
    assert "Traceback" not in capsys.readouterr().err
    assert not case.out.exists()


def test_refcomp_config_class_names_never_reach_the_user(tiny, tmp_path, caplog):
    """The old messages named `Controls.strength`; the flag is what the user typed."""
    case = Case(tiny, tmp_path)
    with caplog.at_level(logging.ERROR):
        assert cli.main(case.argv(strength="-0.5")) == 2
    assert "--strength" in caplog.text and "Controls" not in caplog.text


def test_demo_help_is_the_demos_own(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["demo", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--scene-seed" in text and "reproduce" not in text        # the parent menu lists reproduce


def test_demo_still_takes_its_flags(monkeypatch):
    seen = []
    monkeypatch.setattr("refcomp.toy.demo.run_demo", lambda **kw: seen.append(kw))
    assert cli.main(["demo", "--seed", "3", "--steps", "2", "--out", "x.png"]) == 0
    assert seen and seen[0]["seed"] == 3 and seen[0]["steps"] == 2


def test_unexpected_errors_are_one_line_too(monkeypatch, caplog, tiny, tmp_path):
    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr("refcomp.compose.compose_run", crash)
    with caplog.at_level(logging.ERROR):
        assert cli.main(Case(tiny, tmp_path).argv()) == 1
    assert caplog.records[-1].getMessage() == ("failed (RuntimeError): disk on fire second line (set "
                                               "REFCOMP_DEBUG=1 for the traceback)")
    monkeypatch.setenv("REFCOMP_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(Case(tiny, tmp_path).argv())


@pytest.mark.parametrize("extra, expected", [(["--guidance", "nan"], "--guidance: expected a finite number"),
                                             (["--layout", "missing.json"], "--layout: layout file not found")])
def test_console_script_prints_one_line(tiny, tmp_path, extra, expected):
    """The real console script: stderr is exactly one line, exit status 2, no image."""
    script = Path(sys.executable).parent / "refcomp"
    case = Case(tiny, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("REFCOMP_DEBUG", None)
    done = subprocess.run([str(script), *case.argv(), *extra], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refcomp: error: ") and expected in lines[0], done.stderr
    assert not case.out.exists()
