"""Nothing half-written (issue 12): a process killed or failing while writing an adapter,
a CLI image or a trainer checkpoint leaves the old file or none, never a truncated one,
and no temporary files behind; a damaged trainer checkpoint names its file."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from refcomp import cli
from refcomp_core import CheckpointError, RefCompAdapter, RefCompConfig
from refcomp_core.atomic import atomic_path, write_text_atomic
from refcomp_core.checkpoint import load_adapter, save_adapter
from training import checkpoint as train_ckpt

CONFIG = RefCompConfig(hidden_size=32, num_double_blocks=2, num_single_blocks=1, num_heads=2, lora_rank=4,
                       alpha_hidden=8, modulation_rank=4, bridge_rank=2, dense_k=2, fourier_freqs=2)
REPO = Path(__file__).resolve().parents[2]

WRITER = """
import sys, time
from refcomp_core.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"new content " * 100000)
        f.flush()
        print("half written", flush=True)
        time.sleep(120)
"""


def test_sigkill_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old content")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "half written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert target.read_bytes() == b"old content"


def interrupted_writer(fraction: float = 0.5):
    """A writer that writes part of its output to the path it was given, then dies."""
    def write(*args, **kwargs):
        path = next(a for a in args if isinstance(a, (str, os.PathLike)))
        Path(path).write_bytes(b"\x00" * int(1000 * fraction))
        raise KeyboardInterrupt
    return write


def test_save_adapter_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "a.safetensors"
    save_adapter(path, RefCompAdapter(CONFIG), stage=1, step=5)
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_writer())
    with pytest.raises(KeyboardInterrupt):
        save_adapter(path, RefCompAdapter(CONFIG), stage=2, step=6)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["a.safetensors"]
    monkeypatch.undo()
    assert load_adapter(path)[1].step == 5
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_text_and_failures_clean_up(tmp_path):
    path = tmp_path / "state.json"
    write_text_atomic(path, '{"step": 1}')
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            Path(tmp).write_text('{"st')
            raise RuntimeError("killed")
    assert path.read_text() == '{"step": 1}' and os.listdir(tmp_path) == ["state.json"]


def test_cli_image_write_failure_keeps_the_old_image(tiny, tmp_path, monkeypatch, caplog):
    from PIL import Image

    from compose_fixtures import T5_LEN, tiny_layout

    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps(tiny_layout()))
    out = tmp_path / "out.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out)
    before = out.read_bytes()
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):          # disk full half-way through the image
        real_save(self, fp, *args, **kwargs)
        with open(fp, "r+b") as f:
            f.truncate(20)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    argv = ["compose", "--layout", str(layout), "--refs", str(tiny.refs), "--flux", str(tiny.flux), "--adapter",
            str(tiny.adapter_random), "--clip", str(tiny.clip), "--dino", str(tiny.dino), "--out", str(out),
            "--steps", "2", "--max-sequence-length", str(T5_LEN), "--device", "cpu"]
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 1
    assert "No space left on device" in caplog.records[-1].getMessage()
    assert out.read_bytes() == before                     # was truncated
    assert sorted(os.listdir(tmp_path)) == ["layout.json", "out.png"]


class FakeAccelerator(SimpleNamespace):
    """What training/checkpoint.py uses of accelerate, on one process."""

    def __init__(self, folder: Path) -> None:
        super().__init__(distributed_type="NO", is_main_process=True, hooks={}, loaded=[],
                         project_configuration=SimpleNamespace(iteration=0), folder=folder)

    def save_state(self, safe_serialization: bool = True) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        return str(self.folder)

    def load_state(self, path: str) -> None:
        self.loaded.append(path)

    def wait_for_everyone(self) -> None:
        pass

    def register_save_state_pre_hook(self, fn) -> None:
        self.hooks["save"] = fn

    def register_load_state_pre_hook(self, fn) -> None:
        self.hooks["load"] = fn


@pytest.mark.parametrize("state", ['{"step": 3, "ski', "[]", '{"step": "3"}', '{"step": -1}',
                                   '{"step": 3, "skipped": [1]}', "\xff\xfe"])
def test_damaged_trainer_state_names_the_file_before_loading(tmp_path, state):
    acc = FakeAccelerator(tmp_path / "run" / "checkpoints" / "checkpoint_0")
    assert train_ckpt.save_checkpoint(acc, 3, {"bad_image": 1}) == str(acc.folder)
    state_file = acc.folder / train_ckpt.STATE_FILE
    assert json.loads(state_file.read_text()) == {"step": 3, "skipped": {"bad_image": 1}}
    assert train_ckpt.resume(acc, str(tmp_path / "run"), "latest") == (3, {"bad_image": 1})
    state_file.write_bytes(state.encode("latin-1"))
    acc.loaded.clear()
    with pytest.raises(CheckpointError, match=f"{state_file}: .*resume from an earlier checkpoint"):
        train_ckpt.resume(acc, str(tmp_path / "run"), "latest")           # was JSONDecodeError / KeyError
    assert acc.loaded == []


def test_resume_hook_refuses_a_damaged_adapter_file(tmp_path):
    acc = FakeAccelerator(tmp_path)
    model = SimpleNamespace(adapter=RefCompAdapter(CONFIG))
    train_ckpt.register_hooks(acc, model, stage=1, base_model="tiny", get_step=lambda: 4)
    acc.hooks["save"]([model], [], str(tmp_path))
    path = tmp_path / train_ckpt.ADAPTER_FILE
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=f"{path}: cannot read the tensors"):     # was SafetensorError
        acc.hooks["load"]([model], str(tmp_path))
    assert torch.equal(model.adapter.single_gate.gate, torch.zeros(1))
