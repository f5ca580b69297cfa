"""Minutes-long trainer tests (integration): SIGKILL + --resume latest, and
`accelerate launch --num_processes 2` on CPU."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from training.train import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": REPO}


def losses(path) -> dict[int, dict]:
    """Last logged entry per step (a resumed run logs the replayed steps again)."""
    out = {}
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        out[row["step"]] = row
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(workdir):
    common = ["--set", "checkpoint_every=2", "--set", "checkpoints_total_limit=2"]
    cfg = str(workdir / "config.yaml")
    assert main(["--config", cfg, "--set", "output_dir=straight", "--set", "max_steps=6", *common]) == 0

    killed = workdir / "killed"
    cmd = [sys.executable, "-m", "training.train", "--config", cfg, "--set", "output_dir=killed",
           "--set", "max_steps=100000", *common]
    with open(workdir / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 110
        while not list(killed.glob("checkpoints/*/trainer_state.json")):
            assert proc.poll() is None, (workdir / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within the time limit"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    done = sorted(json.loads(p.read_text())["step"] for p in killed.glob("checkpoints/*/trainer_state.json"))
    assert done and done[-1] <= 4, f"the run got too far before the kill: {done}"
    assert not (killed / "refcomp-stage1.safetensors").exists()

    assert main(["--config", cfg, "--set", "output_dir=killed", "--set", "max_steps=6", "--resume", "latest",
                 *common]) == 0
    a, b = losses(workdir / "straight" / "losses.jsonl"), losses(killed / "losses.jsonl")
    assert sorted(a) == sorted(b) == list(range(6))
    for step in range(6):
        for key in ("loss/flow", "loss/rpl", "loss/box", "loss/identity"):
            assert abs(a[step][key] - b[step][key]) <= 1e-5 * max(1.0, abs(a[step][key])), (step, key)
    wa = load_file(workdir / "straight" / "refcomp-stage1.safetensors")
    wb = load_file(killed / "refcomp-stage1.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_accelerate_launch_two_processes_end_with_identical_weights(workdir):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "training.train", "--config", str(workdir / "config.yaml"),
           "--set", "output_dir=ddp"]
    run = subprocess.run(cmd, cwd=REPO, env={**env(), "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                         text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    sums = {}
    for line in (run.stdout + run.stderr).splitlines():
        if "adapter weights checksum (rank" in line:
            rank = line.split("(rank ")[1].split(" ")[0]
            sums[rank] = line.rsplit(" ", 1)[1]
    assert set(sums) == {"0", "1"} and len(set(sums.values())) == 1, sums
    assert "different adapter weights" not in run.stderr
    assert (workdir / "ddp" / "refcomp-stage1.safetensors").is_file()
