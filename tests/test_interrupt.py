"""Ctrl-C on a real training process: the first SIGINT finishes the step, checkpoints, prints one
line and exits with 130, and the run resumes from that checkpoint; a second SIGINT ends the
process at once."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from nanugpt.checkpoint import load_checkpoint
from nanugpt.metrics import read_metrics

from .conftest import TINY, run_cli
from .test_resume import kill_tree, launch

ARGS = [*TINY, "training.max_steps=100000", "eval.every=100000"]  # no checkpoint but the one Ctrl-C makes


def wait_for_step(proc: object, run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and any(r["step"] >= step for r in read_metrics(metrics))):
        assert proc.poll() is None, f"training exited ({proc.returncode}) before step {step}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.01)


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (SigCgt in /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (sig - 1)))


def test_ctrl_c_checkpoints_the_step_reached_exits_130_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch([sys.executable, "-m", "nanugpt.train"], run_dir, [*ARGS, "eval.iters=1"], "interrupted")
    try:
        wait_for_step(proc, run_dir, 3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        kill_tree(proc)
    out = (tmp_path / "run-interrupted.log").read_text()
    step = read_metrics(run_dir / "metrics.jsonl")[-1]["step"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == step >= 3
    assert f"Interrupted (Ctrl-C) after step {step}, checkpointed: rerun with hydra.run.dir={run_dir}" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "Run failed" not in out

    resumed = run_cli(
        "nanugpt.train", *ARGS, f"training.max_steps={step + 2}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert f"Resumed from {run_dir}/checkpoints/last.pt at step {step}" in resumed.stdout
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, step + 3))


def test_second_ctrl_c_exits_at_once(tmp_path):
    """The first Ctrl-C starts the clean stop, here slowed by a long final evaluation; the second
    one kills the process (it dies by SIGINT, no checkpoint written) instead of waiting for it."""
    run_dir = tmp_path / "run"
    proc = launch([sys.executable, "-m", "nanugpt.train"], run_dir, [*ARGS, "eval.iters=3000"], "twice")
    try:
        wait_for_step(proc, run_dir, 2)
        proc.send_signal(signal.SIGINT)
        while catches(proc.pid, signal.SIGINT):  # until the first one is handled
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == -signal.SIGINT
    finally:
        kill_tree(proc)
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert "Traceback" not in (tmp_path / "run-twice.log").read_text()
