"""DDP on this CPU machine: real `torchrun` processes on gloo, compared with one process.

Tolerance: 1 process and 2 ranks see the same global batch at every step (one seeded generator,
each rank takes its slice), so they compute the same gradient up to float32 summation order:
one process sums 4 micro-batch gradients in turn, 2 ranks sum 2 each and gloo adds the two.
Observed (2 layers, width 32, 12 steps, torch 2.13 CPU): 11 of 12 steps bit-identical, one off
by 1.2e-7 (one float32 ulp of a loss near 5); val losses identical. We allow 2e-5 relative: ~1000x
the observed drift, still far below a one-step change in loss (~3e-2), so a wrong slice, a doubled
gradient or a missing all-reduce fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanugpt.checkpoint import read_log
from nanugpt.metrics import read_metrics
from nanugpt.train import train

from .conftest import REPO, TINY, compose_train

STEPS = 12
# 8 sequences per step = 2 per device x 2 ranks x 2 accumulation micro-steps (x 4 in 1 process):
# exercises no_sync on non-final micro-steps.
DDP_TINY = [o for o in TINY if not o.startswith("training.device_batch_size")] + [
    "training.device_batch_size=2",
    f"training.max_steps={STEPS}",
    "eval.every=6",
    "logging.every=1",
    "training.device=cpu",
]
REL_TOL = 2e-5

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")


def data_dir_override(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Explicit, not via NANUGPT_DATA: module-scoped fixtures run before conftest's autouse one.
    return f"paths.data_dir={tmp_path_factory.getbasetemp() / 'data'}"


def torchrun(run_dir: Path, *overrides: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "nanugpt.train",
            *DDP_TINY,
            *overrides,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=run_dir.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    train(compose_train(DDP_TINY + [data_dir_override(tmp_path_factory)]), run_dir)
    return run_dir


# Time-based checkpoints in the same launch: a minute value below one step's time makes every
# step from 8 on due by rank 0's clock; steps 8-11 save between the evals at 6 and 12.
TIME_SAVES = ["eval.checkpoint_every_minutes=1e-9", "eval.checkpoint_not_before_step=8", "eval.keep_last=20"]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    return run_dir, torchrun(run_dir, data_dir_override(tmp_path_factory), *TIME_SAVES)


def assert_same_losses(a: Path, b: Path) -> None:
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for x, y in zip(ra, rb, strict=False):
        assert y["train/loss"] == pytest.approx(x["train/loss"], rel=REL_TOL), x["step"]
        assert y["train/acc"] == pytest.approx(x["train/acc"], abs=1e-9), x["step"]  # same predictions
        if "val/loss" in x:
            assert y["val/loss"] == pytest.approx(x["val/loss"], rel=REL_TOL), x["step"]
    assert ra[-1]["train/loss"] < ra[0]["train/loss"] - 0.05  # it trained, so equality means something


@pytest.mark.slow
def test_two_ranks_match_one_process_every_step(single, ddp):
    run_dir, proc = ddp
    assert_same_losses(single, run_dir)
    assert "global batch 8 = 2 device x 2 ranks x 2 accum" in proc.stdout


@pytest.mark.slow
def test_only_rank_zero_writes_and_talks(ddp):
    run_dir, proc = ddp
    # one console line per step, not one per rank, and one metrics row per step
    assert proc.stdout.count(f"step {STEPS}/{STEPS}") == 1
    assert proc.stdout.count("Done in") == 1
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert len(rows) == STEPS
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == STEPS
    # rank 1 used rank 0's run dir: no second one appeared beside it
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]


@pytest.mark.slow
def test_time_based_saves_are_collective(ddp):
    """Rank 0's clock decides and both ranks save: each save gathers every rank's RNG state (a
    collective that a rank skipping the save would leave hanging), between evals, without a val loss."""
    run_dir, _ = ddp
    log = {e["path"]: e for e in read_log(run_dir / "checkpoints")}
    assert sorted(e["step"] for name, e in log.items() if name.startswith("step_")) == [6, 8, 9, 10, 11, 12]
    assert [log[f"step_{s:07d}.pt"]["val_loss"] for s in (8, 9, 10, 11)] == [None] * 4
    assert log["best.pt"]["step"] in (6, 12) and log["best.pt"]["val_loss"] is not None
    ckpt = torch.load(run_dir / "checkpoints" / "step_0000009.pt", weights_only=True)
    assert ckpt["step"] == 9 and len(ckpt["rng"]) == 2


@pytest.mark.slow
def test_zero1_matches_plain_ddp_and_resumes(single, tmp_path, tmp_path_factory):
    run_dir = tmp_path / "zero1"
    data = data_dir_override(tmp_path_factory)
    torchrun(run_dir, data, "training.parallel=zero1")
    assert_same_losses(single, run_dir)
    # consolidate_state_dict gathered both ranks' shards: Adam moments for every parameter
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    n_params = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    assert len(ckpt["optimizer"]["state"]) == n_params > 0
    assert all("exp_avg" in s for s in ckpt["optimizer"]["state"].values())
    # and the sharded optimizer loads it back: resume=auto continues to a later step
    proc = torchrun(run_dir, data, "training.parallel=zero1", f"training.max_steps={STEPS + 2}")
    assert f"at step {STEPS}" in proc.stdout
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, STEPS + 3))


@pytest.mark.slow
def test_error_on_one_rank_ends_every_rank(tmp_path):
    """Two ranks started by hand, as srun starts tasks (no torchrun agent to kill the others):
    rank 1 cannot write its data dir and fails; rank 0, waiting in a collective, must not hang."""
    bad_data_dir = tmp_path / "not_a_dir"
    bad_data_dir.write_text("a file where rank 1 expects its data dir")
    port = str(29500 + os.getpid() % 1000)
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
        }
        if rank == 1:
            env["NANUGPT_DATA"] = str(bad_data_dir)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "nanugpt.train", *DDP_TINY, f"hydra.run.dir={tmp_path / 'run'}"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    start = time.monotonic()
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    elapsed = time.monotonic() - start
    assert procs[1].returncode != 0 and "not_a_dir" in outputs[1]
    assert procs[0].returncode != 0, outputs[0]
    assert elapsed < 120, f"rank 0 took {elapsed:.0f} s to notice (process-group timeout is 10 min)"


LEAVE = """
import datetime, sys, time
import torch.distributed as td
from nanugpt import dist
td.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
rank = td.get_rank()
if rank == 0:
    time.sleep(3)  # rank 0's last checkpoint write
entered = time.time()
try:
    dist.shutdown(failed=rank == 0 and sys.argv[1] == "rank0_failed")
    outcome = "left"
except RuntimeError as err:
    outcome = "raised: " + str(err)
print(f"{rank} {entered} {time.time()} {outcome}", flush=True)
"""


def leave_process_group(how: str) -> dict[int, tuple[float, float, str]]:
    """Two gloo ranks call `nanugpt.dist.shutdown`, rank 0 three seconds after rank 1; for each rank:
    when it entered shutdown, when it returned, and how."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LEAVE, how],
            env={**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            | {"RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=100)[0] for p in procs]
    lines = [line.split(" ", 3) for out in outputs for line in out.splitlines() if line[:2] in ("0 ", "1 ")]
    assert len(lines) == 2, outputs
    return {int(r): (float(entered), float(left), outcome) for r, entered, left, outcome in lines}


def test_ranks_of_a_finished_run_leave_the_process_group_together():
    """Rank 1, done first, waits for rank 0 instead of tearing down and exiting while it still works."""
    ranks = leave_process_group("finished")
    assert ranks[0][2] == ranks[1][2] == "left"
    assert ranks[1][1] >= ranks[0][0], "rank 1 left before rank 0 had finished"


def test_a_rank_that_fails_at_the_end_still_ends_its_peer_at_once():
    """Rank 0 fails after rank 1 is already waiting to leave: rank 1 fails too, well within the timeout."""
    ranks = leave_process_group("rank0_failed")
    assert ranks[0][2] == "left" and ranks[1][2].startswith("raised: This rank finished training, but another")
    assert ranks[1][1] - ranks[0][0] < 30, "rank 1 waited for the process-group timeout (120 s)"
