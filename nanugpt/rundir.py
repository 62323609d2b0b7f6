"""One process per run dir: an exclusive lock held for the whole run.

Two trainers in one run dir would interleave their metrics rows and overwrite each other's
checkpoints. So a run holds `fcntl.flock` on `<run dir>/.lock` (which names the holder) until it
ends, and a second process is refused with the holder's PID. The kernel drops a flock when its
holder dies, however it dies: the dir of a killed, preempted or requeued run is free again at
once, and rerunning with `hydra.run.dir=<that dir>` resumes there.

A plain run takes the lock in a Hydra callback (`RunDirLock`, nanugpt/conf/train.yaml), before
Hydra writes `.hydra/` and `log.txt`, so a refused launch leaves the running one's files alone;
a sweep locks its sweep dir the same way. `train()` takes it again (a no-op when this process
holds it), which covers sweep jobs and direct calls. Under torchrun only rank 0 locks: the
other ranks use rank 0's dir. Where the filesystem has no flock (some Lustre mounts) a run
warns and goes on unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nanugpt import dist
from nanugpt.errors import UserError
from nanugpt.utils import remove_stale_temp_files

log = logging.getLogger("nanugpt.rundir")

LOCK_NAME = ".lock"
# Locks this process holds: dir -> [fd of its lock file, how many holders in this process].
_held: dict[Path, list[int]] = {}


class RunDirInUseError(UserError):
    """Another live process holds the run dir."""


def in_use_error(run_dir: Path, holder: str) -> RunDirInUseError:
    pid = holder.split()[1] if holder.startswith("PID ") else "<pid>"
    return RunDirInUseError(
        f"Run dir {run_dir} is in use by {holder}: another nanugpt.train is writing to it, and two runs in one "
        "dir would mix their metrics rows and overwrite each other's checkpoints. Wait for that run to end (or "
        f"stop it: Ctrl-C, kill {pid}, scancel), then rerun with hydra.run.dir={run_dir} to resume from its last "
        "checkpoint; or leave hydra.run.dir out to train in a new dir."
    )


def acquire(run_dir: Path) -> str | None:
    """Lock `run_dir` for this process without waiting. Returns None when this process holds
    it, else who does ("PID 123 on host x")."""
    run_dir = run_dir.resolve()
    if run_dir in _held:
        _held[run_dir][1] += 1
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
        os.close(fd)
        return holder or "another process"
    except OSError as err:
        os.close(fd)
        log.warning(
            "Cannot lock run dir %s (%s: the filesystem has no flock); two processes in it would not be refused.",
            run_dir,
            err.strerror,
        )
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _held[run_dir] = [fd, 1]
    return None


def release(run_dir: Path) -> None:
    run_dir = run_dir.resolve()
    if run_dir not in _held:
        return
    _held[run_dir][1] -= 1
    if _held[run_dir][1] == 0:
        os.close(_held.pop(run_dir)[0])  # closing the fd drops the flock; the file stays, naming the last holder


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, info: dist.DistInfo) -> Iterator[None]:
    """For the block: rank 0 holds `run_dir`; if another process does, every rank raises
    RunDirInUseError. Temp files of writers killed mid-write are removed once the dir is ours."""
    holder = acquire(run_dir) if info.is_master else None
    holder = dist.broadcast_object(holder, info)
    if holder is not None:
        raise in_use_error(run_dir, holder)
    try:
        if info.is_master:
            for directory in (run_dir, run_dir / "checkpoints"):
                remove_stale_temp_files(directory)
        yield
    finally:
        if info.is_master:
            release(run_dir)


def move_file_logs(old_dir: Path, new_dir: Path) -> None:
    """Point this process's log files in `old_dir` (Hydra's log.txt) at the same names in
    `new_dir`: a torchrun rank whose own run dir was dropped for rank 0's logs into rank 0's."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == old_dir.absolute():
            moved = logging.FileHandler(new_dir / Path(handler.baseFilename).name, encoding=handler.encoding)
            moved.setFormatter(handler.formatter)
            moved.setLevel(handler.level)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(moved)


def _lock_or_refuse(run_dir: Path) -> None:
    holder = acquire(run_dir)
    if holder is not None:
        # Hydra turns a callback's exceptions into warnings and goes on; SystemExit it lets through.
        sys.exit(f"Error: {in_use_error(run_dir, holder)}")


class RunDirLock(Callback):
    """Locks the run dir (sweep dir for -m) before Hydra writes into it. Torchrun's other ranks
    (RANK > 0) do not lock: they share rank 0's dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") == "0":
            _lock_or_refuse(Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute())

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute())

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _lock_or_refuse(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute())
