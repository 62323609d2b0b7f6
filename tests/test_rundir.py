"""One process per run dir (nanugpt/rundir.py), with real training processes: a second launch into
a dir in use is refused without touching it, a dir whose process died is free again, two launches
in the same second get dirs of their own, and a run cleans the temp files of killed writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanugpt.checkpoint import load_checkpoint, read_log
from nanugpt.metrics import read_metrics
from nanugpt.train import train

from .conftest import REPO, TINY, compose_train, run_cli
from .test_resume import kill_tree, launch


def wait_for_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (read_log(ckpt_dir) and (ckpt_dir / "last.pt").is_file()):
        assert proc.poll() is None, f"training exited ({proc.returncode}) before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def test_second_process_on_a_busy_run_dir_is_refused_and_resumes_once_the_first_died(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "eval.every=2", "eval.iters=1"]
    first = launch([sys.executable, "-m", "nanugpt.train"], run_dir, [*args, "training.max_steps=100000"], "first")
    try:
        wait_for_checkpoint(first, run_dir / "checkpoints")
        overrides_before = (run_dir / ".hydra" / "overrides.yaml").read_text()

        second = run_cli("nanugpt.train", *args, "optim.lr=0.01", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
        assert second.returncode == 1
        assert f"Run dir {run_dir} is in use by PID {first.pid} on host " in second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        # refused before Hydra wrote into the dir: the running run's config and log are its own
        assert first.poll() is None
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides_before
        assert "optim.lr=0.01" not in (run_dir / "log.txt").read_text() + overrides_before
        assert "Run failed" not in (run_dir / "log.txt").read_text()
    finally:
        kill_tree(first)  # SIGKILL: the kernel drops its lock

    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    resumed = run_cli(
        "nanugpt.train", *args, f"training.max_steps={step + 2}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert f"Resumed from {run_dir}/checkpoints/last.pt at step {step}" in resumed.stdout
    assert f"training.max_steps 100000 -> {step + 2}" in resumed.stdout  # the changed-config line
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, step + 3))


def test_two_launches_in_the_same_second_both_run_in_dirs_of_their_own(tmp_path):
    """No hydra.run.dir: the default outputs/<date>/<time> has microseconds, so two launches
    started together (the same second, nearly always) neither share a dir nor refuse."""
    cmd = [sys.executable, "-m", "nanugpt.train", *TINY, "training.max_steps=2", "eval.every=2", "eval.iters=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in "ab"
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()[-3000:]
    run_dirs = sorted(p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.jsonl"))
    assert len(run_dirs) == 2, run_dirs
    for run_dir in run_dirs:
        assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2


def test_a_run_cleans_temp_files_of_killed_writes_even_with_no_step_left(tmp_path):
    """A kill during the final save leaves temp files; the rerun has no step to save (the save
    used to be the only place that cleaned them)."""
    cfg = compose_train([*TINY, "training.max_steps=2", "eval.every=2", "eval.iters=1"])
    train(cfg, tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    stale = [ckpt_dir / ".checkpoint_log.yaml.x1y2.tmp", ckpt_dir / ".step_0000002.pt.a1b2.tmp"]
    stale.append(tmp_path / ".metrics.jsonl.c3d4.tmp")
    for path in stale:
        path.write_bytes(b"half a write")
    log_before = read_log(ckpt_dir)
    train(compose_train([*TINY, "training.max_steps=2", "eval.every=2", "eval.iters=1"]), tmp_path)
    assert not [p for p in stale if p.exists()]
    assert read_log(ckpt_dir) == log_before  # nothing was saved: there was no step left


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_a_run_writes_gets_the_mode_a_plain_open_gives(tmp_path, umask):
    """0666 less the umask, so the user's group reads what the umask lets it: atomic_write once made
    checkpoints, metadata, the prepared cache and the sweep summary 0600 (tempfile.mkstemp's mode)."""
    sweep_dir, data_dir = tmp_path / "sweep", tmp_path / "data"
    args = [*TINY, "data.max_bytes=20000", "training.max_steps=2", "eval.every=1", "eval.iters=1"]
    env = {"NANUGPT_DATA": str(data_dir)}
    run_cli("nanugpt.train", "-m", *args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=env, umask=umask)
    run_cli("nanugpt.report", str(sweep_dir), cwd=tmp_path, umask=umask)

    written = [p for root in (sweep_dir, data_dir) for p in root.rglob("*")]
    names = {p.name for p in written}
    for name in ("step_0000002.pt", "last.pt", "best.pt", "checkpoint_log.yaml", "metrics.jsonl", "run_info.json"):
        assert name in names
    for name in ("summary.jsonl", "report.md", "loss_curves.png", "meta.json", "train.bin", "val.bin"):
        assert name in names
    wrong = {
        str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
        for p in written
        if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask
    }
    assert not wrong, f"modes under umask {umask:04o}: {wrong}"
