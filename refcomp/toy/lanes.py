"""Parallel stage training for `refcomp toy reproduce`: variants in lanes, one process each.

A toy stage step runs faster on one torch thread than on two (measured 2026-11-29 on the
2-core machine, stage 2 at batch 16 with cached features: 2.71 s/it on 1 thread, 3.12 s/it
on 2), so two single-threaded trainings side by side nearly halve the stages' wall time.
Each lane trains its variants' stages in order through the real trainer; a variant that
starts from another's stage 1 (`stage1_from`) runs in that variant's lane, after it.
A lane process dies with its parent (Linux `PR_SET_PDEATHSIG`), so a killed run never
leaves a trainer writing behind the rerun; every stage resumes from its last checkpoint.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from typing import Callable

log = logging.getLogger(__name__)


def plan_lanes(variants: tuple[str, ...], specs: dict[str, dict], stage_steps: tuple[int, int, int],
               jobs: int) -> list[list[str]]:
    """Split `variants` into at most `jobs` lanes, balancing their training steps.
    A variant with `stage1_from` joins its source's lane (after it) when that lane has it.  -> lanes of variant names"""
    if jobs < 1:
        raise ValueError(f"ReproduceConfig.stage_jobs is {jobs}; use 1 (serial) or more")
    lanes: list[list[str]] = [[] for _ in range(jobs)]
    load = [0] * jobs
    for variant in variants:
        source = specs[variant].get("stage1_from")
        home = [i for i, lane in enumerate(lanes) if source in lane]
        k = home[0] if home else load.index(min(load))
        lanes[k].append(variant)
        load[k] += sum(stage_steps[s - 1] for s in specs[variant]["stages"])
    return [lane for lane in lanes if lane]


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when its parent exits (no-op elsewhere)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:          # the parent died before prctl took effect
        os._exit(1)


def _lane_main(train_lane: Callable[[list[str]], None], variants: list[str], parent: int) -> None:
    _die_with_parent(parent)
    import torch
    torch.set_num_threads(1)
    train_lane(variants)


def run_lanes(lanes: list[list[str]], train_lane: Callable[[list[str]], None]) -> None:
    """Run each lane in its own process (one torch thread); the first failure stops the rest.
    `train_lane` must be a picklable module-level callable (spawn start method)."""
    if len(lanes) == 1:
        train_lane(lanes[0])
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_lane_main, args=(train_lane, lane, os.getpid()), name=f"toy-lane-{'+'.join(lane)}")
             for lane in lanes]
    for p in procs:
        p.start()
        log.info("toy: lane %s started (pid %d, 1 torch thread)", p.name, p.pid)
    try:
        while True:
            failed = next((p for p in procs if p.exitcode not in (None, 0)), None)   # None: still running
            if failed:
                raise RuntimeError(f"{failed.name} exited with code {failed.exitcode}; see its log above")
            if all(p.exitcode == 0 for p in procs):
                return
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
