"""Crash-safe checkpoints: keep-last-K, SIGKILL during saves, corrupt files, a full disk."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nanugpt.checkpoint import (
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    read_log,
    save_checkpoint,
    step_file_name,
)
from nanugpt.errors import CheckpointError
from nanugpt.metrics import read_metrics

from .conftest import REPO, TINY, run_cli
from .test_resume import kill_tree

CKPT_FILES = {"last.pt", "best.pt", "checkpoint_log.yaml"}


def fake_state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((4,), float(step))}}


def assert_log_names_only_existing_files(ckpt_dir: Path) -> None:
    for entry in read_log(ckpt_dir):  # a file, or a sharded checkpoint's directory
        assert (ckpt_dir / entry["path"]).exists(), entry


def kills_during_saves(ckpt_dir: Path, saver, kills: int, pause: tuple[float, float]):
    """Fork `saver(ckpt_dir, logged_step)` (a process that only saves checkpoints; forked: no
    start-up cost per kill) and SIGKILL it after a random `pause`, `kills` times. Yields after
    each kill (the step the log held before it, whether the kill left a temp file, i.e. landed
    mid-save), for the caller's checks of what survived."""
    fork, rng = multiprocessing.get_context("fork"), random.Random(0)
    for _ in range(kills):
        logged = max((e["step"] for e in read_log(ckpt_dir)), default=0)
        child = fork.Process(target=saver, args=(ckpt_dir, logged), daemon=True)
        child.start()
        time.sleep(rng.uniform(*pause))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        yield logged, bool(list(ckpt_dir.glob(".*.tmp")))


def test_keep_last_k_plus_best(tmp_path):
    val = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.6, 5: 2.7}  # best at step 2, older than every kept file
    best = float("inf")
    for step, loss in val.items():
        save_checkpoint(tmp_path, fake_state(step), step, loss, is_best=loss < best, keep_last=2)
        best = min(best, loss)
        assert_log_names_only_existing_files(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == CKPT_FILES | {"step_0000004.pt", "step_0000005.pt"}
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2  # survives the deletion of step_0000002.pt
    assert os.path.samefile(tmp_path / "last.pt", tmp_path / "step_0000005.pt")  # a link, no extra disk
    assert [e["path"] for e in read_log(tmp_path) if e["path"].startswith("step_")] == [
        "step_0000004.pt",
        "step_0000005.pt",
    ]

    save_checkpoint(tmp_path, fake_state(6), 6, 2.8, is_best=False, keep_last=0)  # keep no step files
    assert {p.name for p in tmp_path.iterdir()} == CKPT_FILES
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6  # the only good one is never deleted


@pytest.fixture
def two_checkpoints(tmp_path) -> Path:
    """A real 4-step CLI run with checkpoints at steps 2 and 4."""
    run_dir = tmp_path / "run"
    run_cli(
        "nanugpt.train",
        *TINY,
        "training.max_steps=4",
        "eval.every=2",
        "eval.iters=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    return run_dir


def test_corrupt_checkpoint_is_named_with_the_newest_good_one(two_checkpoints, tmp_path):
    ckpt_dir = two_checkpoints / "checkpoints"
    last = ckpt_dir / "last.pt"
    with open(last, "r+b") as f:  # truncate in place: last.pt and step_0000004.pt share these bytes
        f.truncate(last.stat().st_size // 2)

    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(last)
    message = str(raised.value)
    assert f"Checkpoint {last} could not be loaded" in message and "truncated, corrupt" in message
    assert f"The newest checkpoint there that loads is {ckpt_dir / 'step_0000002.pt'} (step 2)" in message

    # resume=<path> to the bad file: the same clear error, from the CLI.
    proc = run_cli(
        "nanugpt.train",
        *TINY,
        "training.max_steps=6",
        "eval.every=2",
        "eval.iters=2",
        f"resume={last}",
        f"hydra.run.dir={two_checkpoints}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "step_0000002.pt (step 2); pass that path instead" in proc.stderr

    # resume=auto (the default): warn and fall back to the newest good checkpoint.
    out = run_cli(
        "nanugpt.train",
        *TINY,
        "training.max_steps=6",
        "eval.every=2",
        "eval.iters=2",
        f"hydra.run.dir={two_checkpoints}",
        cwd=tmp_path,
    ).stdout
    assert f"Checkpoint {last} could not be loaded" in out and "trying an older one" in out
    assert f"Resumed from {ckpt_dir / 'step_0000002.pt'} at step 2" in out
    assert [r["step"] for r in read_metrics(two_checkpoints / "metrics.jsonl")] == list(range(1, 7))
    assert load_checkpoint(last)["step"] == 6


def test_generate_names_a_corrupt_checkpoint(two_checkpoints, tmp_path):
    bad = two_checkpoints / "checkpoints" / "best.pt"
    bad.unlink()
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = run_cli("nanugpt.generate", f"ckpt={bad}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        f"Checkpoint {bad} could not be loaded" in proc.stderr
        and "last.pt (step 4); pass that path instead" in proc.stderr
    )


class Named(torch.nn.Module):
    """Children whose own names are the wrappers' words: `module`, and `submodule` (module. inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = torch.nn.Linear(3, 3)
        self.submodule = torch.nn.Linear(3, 2)


def test_wrapper_prefixes_are_stripped_and_module_names_kept(tmp_path):
    torch.manual_seed(0)
    saved = Named()
    # Real wrappers: torch.compile adds `_orig_mod.` (it compiles lazily, so nothing runs here);
    # DataParallel adds `module.` as DDP does, and needs no process group.
    wrapped = torch.nn.DataParallel(torch.compile(saved))
    assert all(k.startswith("module._orig_mod.") for k in wrapped.state_dict())
    for state in (saved.state_dict(), wrapped.state_dict()):
        fresh = Named()
        load_model_state(fresh, state, tmp_path / "x.pt", None, {})
        assert list(fresh.state_dict()) == ["module.weight", "module.bias", "submodule.weight", "submodule.bias"]
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.state_dict().items())


def test_no_loadable_checkpoint_under_resume_auto_is_an_error(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "last.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="No checkpoint in .* loads.*resume=never"):
        find_resume_checkpoint("auto", tmp_path)
    assert find_resume_checkpoint("auto", tmp_path / "fresh") is None
    assert find_resume_checkpoint("never", tmp_path) is None


def big_state(step: int) -> dict:
    """8 MB, so a save (write, fsync, links, log) is wide enough to be hit by a random kill. Built
    with numpy: torch's parallel fill can hang in a forked child (its thread pool does not fork)."""
    return {"step": step, "model": {"w": torch.from_numpy(np.full(1 << 21, float(step), dtype=np.float32))}}


def save_forever(ckpt_dir: Path, step: int) -> None:
    while True:  # a resumed run saving every step, from the newest logged step on
        step += 1
        save_checkpoint(ckpt_dir, big_state(step), step, 1.0 / step, is_best=step % 3 == 1, keep_last=2)


def test_sigkill_during_saves_many_times(tmp_path):
    """SIGKILL a process that does nothing but save checkpoints, 25 times at random moments (a
    forked child: no start-up cost per kill). After each kill the log names only existing files,
    last.pt and best.pt load with whole tensors, and last.pt is at least as new as the log says.
    Leftover temp files after a kill prove that kills landed mid-save."""
    ckpt_dir, mid_save = tmp_path / "checkpoints", 0
    for logged, landed_mid_save in kills_during_saves(ckpt_dir, save_forever, 25, (0.05, 0.3)):
        mid_save += landed_mid_save
        assert_log_names_only_existing_files(ckpt_dir)
        path, state = find_resume_checkpoint("auto", tmp_path)
        assert path == ckpt_dir / "last.pt"  # the newest checkpoint is whole: no fallback needed
        # The log is rewritten after last.pt moves on, so a kill in between leaves it one save
        # behind (never ahead): it may miss the newest file, but never names a missing one.
        assert state["step"] >= max(e["step"] for e in read_log(ckpt_dir)) >= logged
        assert torch.equal(state["model"]["w"], big_state(state["step"])["model"]["w"])
        best = load_checkpoint(ckpt_dir / "best.pt")
        assert best["step"] % 3 == 1 and torch.equal(best["model"]["w"], big_state(best["step"])["model"]["w"])
    assert mid_save >= 5 and state["step"] >= 25, (mid_save, state["step"])


@pytest.mark.slow
def test_sigkill_training_during_frequent_saves_then_resume_matches(tmp_path):
    """The training CLI, checkpointing every step, SIGKILLed at random moments two or three times: after
    every kill the newest checkpoint loads; the run, resumed after each kill, ends with the same
    per-step losses (one row per step in metrics.jsonl) as an uninterrupted one."""
    overrides = [*TINY, "training.max_steps=16", "eval.every=1", "eval.iters=1", "eval.keep_last=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_cli("nanugpt.train", *overrides, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)

    run_dir, ckpt_dir = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        before = read_log(ckpt_dir)[-1]["step"] if read_log(ckpt_dir) else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "nanugpt.train", *overrides, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while proc.poll() is None and not (read_log(ckpt_dir) and read_log(ckpt_dir)[-1]["step"] > before):
            time.sleep(0.002)  # until this process has saved once
        time.sleep(rng.uniform(0, 0.2))
        if proc.poll() is not None:
            break
        kill_tree(proc)
        kills += 1
        assert_log_names_only_existing_files(ckpt_dir)
        path, state = find_resume_checkpoint("auto", run_dir)
        assert path == ckpt_dir / "last.pt" and state["step"] >= max(e["step"] for e in read_log(ckpt_dir)) > before
    assert kills >= 2
    run_cli("nanugpt.train", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_log_names_only_existing_files(ckpt_dir)
    assert not list(ckpt_dir.glob(".*.tmp"))  # leftovers of killed saves are cleaned up
    ref = [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / "reference" / "metrics.jsonl")]
    assert [(r["step"], r["train/loss"]) for r in read_metrics(run_dir / "metrics.jsonl")] == ref


@pytest.fixture
def small_disk(tmp_path):
    """A real 700 KB filesystem (tmpfs; needs root and a kernel that lets us mount)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); "
            "test_file_size_limit_while_saving_keeps_the_last_checkpoint covers a real failed write"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def assert_previous_checkpoint_survives(ckpt_dir: Path, step: int) -> None:
    assert load_checkpoint(ckpt_dir / "last.pt")["step"] == step
    assert load_checkpoint(ckpt_dir / "best.pt")["step"] == step
    assert not (ckpt_dir / step_file_name(step + 1)).exists() and not list(ckpt_dir.glob(".*.tmp"))
    assert_log_names_only_existing_files(ckpt_dir)
    assert [e["step"] for e in read_log(ckpt_dir)] == [step] * 3


def test_disk_full_while_saving_keeps_the_previous_checkpoint(small_disk, tmp_path):
    """The real thing: the training CLI on a disk with room for one ~430 KB checkpoint, not two."""
    run_dir = small_disk / "run"
    proc = run_cli(
        "nanugpt.train",
        *TINY,
        "training.max_steps=5",
        "eval.every=1",
        "eval.iters=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    message = " ".join(proc.stderr.split())
    ckpt_dir = run_dir / "checkpoints"
    assert (
        f"The disk is full: could not write checkpoint {ckpt_dir / 'step_0000002.pt'} for step 2 (No space left on "
        "device)" in message
    )
    assert f"The last checkpoint {ckpt_dir / 'last.pt'} is intact" in message and "Free space on that disk" in message
    assert_previous_checkpoint_survives(ckpt_dir, 1)


def test_file_size_limit_while_saving_keeps_the_last_checkpoint(tmp_path):
    """A real failed write that needs no root: under RLIMIT_FSIZE the kernel refuses to grow a file
    past the limit (`ulimit -f`): write() fails with EFBIG (CPython ignores SIGXFSZ, which would
    otherwise kill the process). A 16 KB checkpoint fits under the 1 MB limit, the next, 2 MB, does not."""
    script = f"""
import resource, signal, torch
from pathlib import Path
from nanugpt.checkpoint import save_checkpoint
from nanugpt.errors import CheckpointError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # CPython's default; explicit here
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
ckpt_dir = Path({str(tmp_path / "checkpoints")!r})
save_checkpoint(ckpt_dir, {{"step": 1, "model": {{"w": torch.zeros(1 << 12)}}}}, 1, 1.0, is_best=True)
try:
    save_checkpoint(ckpt_dir, {{"step": 2, "model": {{"w": torch.zeros(1 << 19)}}}}, 2, 0.5, is_best=True)
except CheckpointError as err:
    print(err)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ckpt_dir = tmp_path / "checkpoints"
    assert (
        f"Checkpoint {ckpt_dir / 'step_0000002.pt'} for step 2 is larger than this process may write (File too large"
        in proc.stdout
    )
    assert f"The last checkpoint {ckpt_dir / 'last.pt'} is intact" in proc.stdout and "ulimit -f" in proc.stdout
    assert_previous_checkpoint_survives(ckpt_dir, 1)
