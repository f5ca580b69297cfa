"""The trainer's SDPA backend choice (issue 13): cuDNN attention off under gradient checkpointing on
CUDA unless a probe passes, one log line, and the probe cases run (tiny, math backend, on CPU).

torch's backend switches are process-wide flags that exist without a GPU, so the CUDA policy is
checked here with a `cuda` device object; nothing runs on it."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from training.attention import REPO, choose_attention_backends
from training.config import config_from_dict
from training.sdpa_probe import CASES

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def restore_cudnn_switch():
    was = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(was)


def _one_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "training.attention"]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("checkpointing, policy, probe_passes, want", [
    (True, "auto", None, False), (False, "auto", None, True), (True, "on", None, True), (False, "off", None, False),
    (True, "probe", True, True), (True, "probe", False, False)])
def test_cuda_policy_sets_the_cudnn_switch(caplog, checkpointing, policy, probe_passes, want) -> None:
    torch.backends.cuda.enable_cudnn_sdp(not want)
    calls = []

    def probe():
        calls.append(1)
        return probe_passes, "PROBE sdpa_layout_ckpt ok" if probe_passes else "PROBE sdpa_layout_ckpt error"

    with caplog.at_level(logging.INFO, logger="training.attention"):
        got = choose_attention_backends(CUDA, gradient_checkpointing=checkpointing, policy=policy, probe=probe)
    assert got == want == torch.backends.cuda.cudnn_sdp_enabled()
    assert len(calls) == (policy == "probe")
    line = _one_line(caplog)
    assert f"cuDNN attention {'on' if want else 'off'}" in line and "flash" in line
    if policy == "auto" and checkpointing:
        assert "gradient checkpointing" in line


def test_cpu_leaves_the_switches_alone(caplog) -> None:
    torch.backends.cuda.enable_cudnn_sdp(True)
    with caplog.at_level(logging.INFO, logger="training.attention"):
        assert not choose_attention_backends(torch.device("cpu"), gradient_checkpointing=True)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    assert "cpu" in _one_line(caplog)


def test_bad_policy_is_named() -> None:
    with pytest.raises(ValueError, match="cudnn_attention"):
        choose_attention_backends(CUDA, gradient_checkpointing=True, policy="maybe")
    with pytest.raises(ValueError, match="cudnn_attention"):
        config_from_dict({"stage": 1, "output_dir": "x", "cudnn_attention": "maybe", "data": {"manifest": "m.jsonl"}})


@pytest.mark.parametrize("case", CASES)
def test_probe_cases_run_in_a_child_process(case: str) -> None:
    out = subprocess.run([sys.executable, "-m", "training.sdpa_probe", case, "--device", "cpu"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith(f"PROBE {case} ok")


def test_a_training_run_logs_its_choice(workdir, caplog) -> None:
    from test_train import train
    with caplog.at_level(logging.INFO, logger="training.attention"):
        assert train(workdir, 1, "max_steps=1", "gradient_checkpointing=true", "cudnn_attention=off") == 0
    assert "torch's SDPA backends on cpu" in _one_line(caplog)
