"""`refcomp toy validate`: settings are chosen on train-split layouts that no run trains on
and that are never the held-out eval split."""
import os

import pytest

from refcomp.toy.bench import VALIDATION_START, eval_scenes, validation_scenes
from refcomp.toy.cli import main
from refcomp.toy.demo import BUNDLED_WEIGHTS
from refcomp.toy.parts import ADAPTER_FILE
from refcomp.toy.reproduce import ReproduceConfig
from refcomp.toy.world import sample_scene, scene_seed


def test_validation_layouts_are_neither_training_nor_held_out_layouts():
    val = [s.caption for s in validation_scenes(32)]
    assert VALIDATION_START > 1000 * ReproduceConfig().train_scenes
    assert val[0] == sample_scene(scene_seed("train", VALIDATION_START)).caption        # deterministic
    train = {sample_scene(scene_seed("train", i)).caption for i in range(200)}
    held_out = {s.caption for s in eval_scenes(64)}
    assert len(set(val)) > 25 and not set(val) & held_out and not set(val) & train


@pytest.mark.usefixtures("one_thread")
def test_validate_prints_one_row_per_adapter(capsys):
    adapter = os.path.join(BUNDLED_WEIGHTS, ADAPTER_FILE)
    assert main(["validate", "--parts", BUNDLED_WEIGHTS, "--adapter", adapter, "--count", "2",
                 "--steps", "2", "--alpha", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "every α held at 0.5" in out.splitlines()[0]
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| adapter", "| captions only", f"| {adapter}"]
    assert all(len(r.split(" | ")) == 8 for r in rows)


def test_validate_names_a_missing_file(tmp_path, caplog):
    assert main(["validate", "--parts", BUNDLED_WEIGHTS, "--adapter", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors does not exist" in caplog.text and "--adapter" in caplog.text


def test_validate_refuses_an_alpha_outside_zero_one(caplog):
    assert main(["validate", "--parts", BUNDLED_WEIGHTS, "--alpha", "1.5"]) == 2
    assert "--alpha must be in [0, 1], got 1.5" in caplog.text
