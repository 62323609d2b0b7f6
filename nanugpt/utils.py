"""Small helpers shared by the entry points: atomic files, seeding, the config directory."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # shipped inside the package (wheels too)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_temp_file(path: Path) -> tuple[int, Path]:
    """A new, uniquely named file beside `path`, open for writing. Not tempfile.mkstemp: it
    creates files 0600, and a checkpoint or a dataset should get the mode any new file gets here,
    0666 less the umask (and a directory's default ACL), which the kernel applies to this open."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:  # 32 random bits taken by another writer: draw again
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through `write(file)` to a temp name beside `path`, fsync, then rename over it.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_file(path)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(directory: Path) -> None:
    """Delete the temp files of `atomic_write`s (and temp dirs of sharded saves) whose process was
    killed mid-write. Only for a directory no live process writes to (a run dir its run holds,
    see nanugpt.rundir)."""
    for stale in directory.glob(".*.tmp"):
        if stale.is_dir() and not stale.is_symlink():  # a sharded checkpoint's temp dir
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
