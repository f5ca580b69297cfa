"""`refcomp toy reproduce` trains its variants in lanes: balanced, dependency-ordered,
one process and one torch thread each, and the first failure stops the rest."""
import os
import time
from functools import partial

import pytest

from refcomp.toy.lanes import plan_lanes, run_lanes
from refcomp.toy.reproduce import VARIANTS, ReproduceConfig


def test_default_variants_split_into_two_balanced_lanes():
    lanes = plan_lanes(("main", "alpha2", "frozen", "noroute"), VARIANTS, (120, 160, 50), 2)
    assert lanes == [["main", "noroute"], ["alpha2", "frozen"]]          # 610 vs 540 steps


def test_a_variant_follows_the_lane_of_its_stage1_source():
    lanes = plan_lanes(("alpha2", "main", "noroute", "frozen"), VARIANTS, (120, 160, 50), 2)
    assert next(lane for lane in lanes if "frozen" in lane)[:1] == ["alpha2"]
    lanes = plan_lanes(("main", "frozen"), VARIANTS, (120, 160, 50), 2)  # alpha2 already trained: balance
    assert lanes == [["main"], ["frozen"]]


def test_one_job_is_one_lane_in_order_and_zero_jobs_is_refused():
    assert plan_lanes(tuple(VARIANTS), VARIANTS, (1, 1, 1), 1) == [list(VARIANTS)]
    with pytest.raises(ValueError, match="stage_jobs"):
        plan_lanes(("main",), VARIANTS, (1, 1, 1), 0)
    with pytest.raises(ValueError, match="stage_jobs"):
        ReproduceConfig(stage_jobs=0)


def record(folder: str, variants: list[str]) -> None:
    import torch
    for v in variants:
        if v == "bad":
            raise RuntimeError("this lane fails on purpose")
        if v == "slow":
            time.sleep(60)
        with open(os.path.join(folder, v), "w") as f:
            f.write(f"{os.getpid()} {torch.get_num_threads()}")


@pytest.mark.integration
def test_lanes_run_in_separate_single_thread_processes(tmp_path):
    run_lanes([["a", "b"], ["c"]], partial(record, str(tmp_path)))
    seen = {v: (tmp_path / v).read_text().split() for v in "abc"}
    assert all(threads == "1" for _, threads in seen.values())
    assert seen["a"][0] == seen["b"][0] != seen["c"][0] != str(os.getpid())


@pytest.mark.integration
def test_a_failing_lane_stops_the_others(tmp_path):
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="toy-lane-bad exited"):
        run_lanes([["bad"], ["slow"]], partial(record, str(tmp_path)))
    assert time.perf_counter() - start < 50 and not (tmp_path / "slow").exists()


LANE_HELPER = '''
import os, sys, time
from functools import partial
from refcomp.toy.lanes import run_lanes

def slow(folder, variants):
    with open(os.path.join(folder, variants[0]), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    run_lanes([["one"], ["two"]], partial(slow, sys.argv[1]))
'''


@pytest.mark.integration
def test_lane_processes_die_with_a_killed_parent(tmp_path):
    """A killed `refcomp toy reproduce` must not leave trainers writing behind its rerun."""
    import signal
    import subprocess
    import sys
    (tmp_path / "lane_helper.py").write_text(LANE_HELPER)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "lane_helper.py"), str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": str(tmp_path)})
    deadline = time.time() + 60
    while time.time() < deadline and not ((tmp_path / "one").exists() and (tmp_path / "two").exists()):
        time.sleep(0.2)
    pids = [int((tmp_path / v).read_text()) for v in ("one", "two")]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"      # a zombie has exited
        except FileNotFoundError:
            return False

    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), "a lane outlived its killed parent"
