"""Data parallelism through Accelerate, for real: two CPU processes (gloo) under torchrun.

One launch (about 20 s on 2 cores) checks what a data-parallel run must guarantee: identical
weights on every process after every update, disjoint prompts, one writer of checkpoints, the
same statistics on every process, and a resumed run equal to an uninterrupted one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dp_worker.py")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # One retry. Once, on a machine loaded by another test run, rank 0 died in C++ below Python ("terminate
    # called without an active exception", no Python traceback) and we could not reproduce it; a real failure
    # fails twice.
    for _ in range(2):
        out = tmp_path_factory.mktemp("dp")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--standalone", str(WORKER), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)], out


def test_two_processes_really_ran(reports):
    (r0, r1), _ = reports
    assert r0["world_size"] == r1["world_size"] == 2


def test_weights_are_identical_on_every_process(reports):
    (r0, r1), _ = reports
    assert r0["straight"]["digest"] == r1["straight"]["digest"]
    assert r0["resumed"]["digest"] == r1["resumed"]["digest"]


def test_processes_draw_disjoint_prompts_from_one_shared_permutation(reports):
    (r0, r1), _ = reports
    for p0, p1 in zip(r0["straight"]["prompts"], r1["straight"]["prompts"]):
        assert len(p0) == len(p1) == 4 and not set(p0) & set(p1)
    # 16 prompts, 8 per update: the first two updates cover every prompt exactly once
    seen = [p for upd in r0["straight"]["prompts"][:2] + r1["straight"]["prompts"][:2] for p in upd]
    assert sorted(seen) == sorted(f"prompt {i}: once" for i in range(16))


def test_statistics_are_gathered_across_processes(reports):
    (r0, r1), _ = reports
    assert r0["straight"]["stats"] == r1["straight"]["stats"]  # every process reports the global numbers
    betas = [s["objective/kl_coef"] for s in r0["straight"]["stats"]]
    assert len(set(betas)) > 1  # the adaptive β moved, and identically everywhere (it is in the stats)
    assert all(s["env/score_mean"] > 0 and s["policy/grad_norm"] > 0 for s in r0["straight"]["stats"])  # it learns


def test_only_the_main_process_writes_checkpoints(reports):
    (r0, r1), out = reports
    assert r0["writes"] == 3 and r1["writes"] == 0  # policy (save_model calls save_file), optimizer, rng
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert not list(out.glob("checkpoint.*"))  # no temporary or .old folder left


def test_a_resumed_run_equals_a_straight_one(reports):
    (r0, r1), _ = reports
    for r in (r0, r1):
        assert r["first"]["prompts"] + r["resumed"]["prompts"] == r["straight"]["prompts"]
        for got, want in zip(r["first"]["stats"] + r["resumed"]["stats"], r["straight"]["stats"], strict=True):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7, nan_ok=True)
        assert r["resumed"]["digest"] == r["straight"]["digest"]
