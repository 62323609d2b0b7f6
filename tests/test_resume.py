"""Exact resume: a run SIGKILLed after step k and resumed is bit-identical to one never stopped.

Each case runs the real CLI three times as separate processes: once uninterrupted, once killed
with SIGKILL (the process and all its children, as a lost node would) once
metrics.jsonl shows step k, and once more in the same run dir, where `resume=auto` (the default)
picks up the newest checkpoint. Per-step train losses (all of them: the resumed run's
metrics.jsonl is truncated to its checkpoint and appended) and the final weights must be equal
bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanugpt.checkpoint import load_checkpoint, pointer, read_log
from nanugpt.metrics import read_metrics
from nanugpt.observe import RUN_ID_FILE

from .conftest import REPO, TINY
from .test_wandb import history, offline_runs, records

MAX_STEPS = 16
KILL_AFTER = 5
BASE = [*TINY, f"training.max_steps={MAX_STEPS}", "eval.every=2", "eval.iters=2", "model.dropout=0.1"]


def launch(
    cmd: list[str], run_dir: Path, overrides: list[str], log_name: str, env: dict | None = None
) -> subprocess.Popen:
    """Start a training process (its output to a log file beside the run dir)."""
    with open(run_dir.parent / f"{run_dir.name}-{log_name}.log", "w") as log_file:  # the child keeps its own fd
        return subprocess.Popen(
            [*cmd, *overrides, f"hydra.run.dir={run_dir}"],
            cwd=run_dir.parent,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def finish(proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    rc = proc.wait(timeout=timeout)
    log = Path(proc.args[-1].split("=", 1)[1])
    assert rc == 0, f"{what} failed ({rc}):\n" + (log.parent / f"{log.name}-{what}.log").read_text()[-4000:]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in process_tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def kill_after_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before it could be killed after step {step}")
        if metrics.is_file() and any(r["step"] >= step for r in read_metrics(metrics)):
            kill_tree(proc)
            return
        time.sleep(0.005)
    kill_tree(proc)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def check_kill_and_resume_is_bit_identical(
    tmp_path: Path, cmd: list[str], overrides: list[str], env: dict | None = None
) -> int:
    """Returns the step the resumed run continued from."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    ref = launch(cmd, reference, overrides, "reference", env)
    finish(ref, "reference")

    killed = launch(cmd, resumed, overrides, "killed", env)
    kill_after_step(killed, resumed, KILL_AFTER)
    last = pointer(resumed / "checkpoints", "last")  # last.pt, or an FSDP run's sharded last/
    ckpt_step = load_checkpoint(last)["step"]
    assert KILL_AFTER - 2 <= ckpt_step < MAX_STEPS  # really stopped mid-run
    for entry in read_log(resumed / "checkpoints"):
        assert (resumed / "checkpoints" / entry["path"]).exists()

    finish(launch(cmd, resumed, overrides, "resume", env), "resume")
    assert f"Resumed from {last} at step {ckpt_step}" in (tmp_path / "resumed-resume.log").read_text()

    ref_losses, got_losses = train_losses(reference), train_losses(resumed)
    assert [s for s, _ in got_losses] == list(range(1, MAX_STEPS + 1))  # one row per step, no duplicates
    assert got_losses == ref_losses  # exact float equality, steps after the kill included
    ref_ckpt, got_ckpt = (
        load_checkpoint(pointer(reference / "checkpoints", "last")),
        load_checkpoint(pointer(resumed / "checkpoints", "last")),
    )
    assert ref_ckpt["model"].keys() == got_ckpt["model"].keys()
    for name, tensor in ref_ckpt["model"].items():
        assert torch.equal(tensor, got_ckpt["model"][name]), name
    assert got_ckpt["best_val_loss"] == ref_ckpt["best_val_loss"]
    return ckpt_step


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    check_kill_and_resume_is_bit_identical(tmp_path, [sys.executable, "-m", "nanugpt.train"], BASE)


def test_sigkill_and_resume_with_grad_accum_continues_the_same_wandb_run(tmp_path):
    """Gradient accumulation 2, and W&B offline (real wandb): the resumed run logs into the run
    the killed one started (same id, kept in <run dir>/wandb_run_id), from the checkpoint's step."""
    wandb_dir = tmp_path / "wandb_dir"
    overrides = [*BASE, "training.device_batch_size=4", "logging.wandb.mode=offline"]
    env = {"WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    ckpt_step = check_kill_and_resume_is_bit_identical(
        tmp_path, [sys.executable, "-m", "nanugpt.train"], overrides, env
    )
    run_id = (tmp_path / "resumed" / RUN_ID_FILE).read_text().strip()
    files = [p for p in offline_runs(wandb_dir) if p.name == f"run-{run_id}.wandb"]
    assert len(files) == 2  # the killed run's and the resumed run's, one W&B run id
    assert sorted(history(records(files[-1]))) == list(range(ckpt_step + 1, MAX_STEPS + 1))


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical_with_two_ddp_ranks(tmp_path):
    """2 ranks on gloo via torchrun; each rank's RNG state (dropout) is saved and restored."""
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nanugpt.train",
    ]
    overrides = [*BASE, "training.device_batch_size=4", "training.device=cpu"]
    check_kill_and_resume_is_bit_identical(tmp_path, torchrun, overrides)
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
