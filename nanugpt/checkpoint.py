"""Checkpoints: crash-safe saves, a human-readable log of them, and safe loads.

    <run dir>/checkpoints/step_0000200.pt      the newest `eval.keep_last` saves, by step
                         /last.pt              hard link to the newest save
                         /best.pt              hard link to the save with the best val loss
                         /checkpoint_log.yaml  one entry per file that exists: step, path, val loss

A save writes its step file to a temp name, fsyncs and renames it, then points last.pt (and
best.pt) at it by renaming a fresh hard link over the old name, then rewrites the log, and only
then deletes step files beyond `keep_last`. A crash at any moment leaves last.pt whole (old or
new) and a log that names only files that exist. Hard links share the bytes: last.pt and best.pt
cost no extra disk unless best is older than every kept step file.

Loads use `torch.load(weights_only=True)`: a checkpoint is untrusted input and must not be able
to run code. So everything saved is tensors and plain Python containers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml

from nanugpt.errors import CheckpointError
from nanugpt.utils import atomic_write, fsync_dir, remove_stale_temp_files

log = logging.getLogger(__name__)

LOG_NAME = "checkpoint_log.yaml"
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_file_name(step: int) -> str:
    return f"step_{step:07d}.pt"


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes that wrappers put in front of every key (a state dict saved from a
    compiled or DDP-wrapped model, in any nesting). Only a prefix that every key carries is a
    wrapper's: the same word on some keys, or inside a key, is a module's own name."""
    while state_dict and (
        prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
    ):
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    return state_dict


# ---- RNG state: every rank's, so a resumed DDP run draws the same dropout masks on every rank


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def all_rng_states() -> list[dict[str, Any]]:
    """This process's RNG state, or every rank's (index = rank) in a distributed run.

    A collective: in a distributed run every rank must call it at the same point."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return [rng_state()]
    states: list[Any] = [None] * torch_dist.get_world_size()
    # Between our own ranks, so pickling is fine; tensors travel as numpy arrays because
    # all_gather_object cannot unpickle CPU tensors here (torch 2.13, gloo).
    torch_dist.all_gather_object(states, _map_tensors(rng_state(), lambda t: t.numpy()))
    return [_map_tensors(s, torch.from_numpy, np.ndarray) for s in states]


def _map_tensors(x: Any, fn: Any, kind: type = torch.Tensor) -> Any:
    if isinstance(x, kind):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map_tensors(v, fn, kind) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_map_tensors(v, fn, kind) for v in x)
    return x


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng_state(states: list[dict[str, Any]], rank: int, world_size: int) -> None:
    if len(states) != world_size:
        log.warning(
            "The checkpoint holds RNG states for %d rank(s) but this run has %d; every rank takes rank 0's. "
            "Training continues, but not bit-identically to the original run.",
            len(states),
            world_size,
        )
        rank = 0
    set_rng_state(states[rank])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---- saving


def _link(src: Path, dst: Path) -> None:
    """Point `dst` at `src`'s bytes atomically: a hard link renamed over `dst` (a copy where the
    filesystem has no hard links)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as source:
            atomic_write(tmp, lambda f: shutil.copyfileobj(source, f))
    os.replace(tmp, dst)


def _step_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step_*.pt") if (m := STEP_FILE.match(p.name))]
    return sorted(found)


def save_checkpoint(
    ckpt_dir: Path, state: dict[str, Any], step: int, val_loss: float | None, is_best: bool, keep_last: int = 2
) -> Path:
    """Write `step_<step>.pt`, point last.pt (and best.pt when `is_best`) at it, log it, and
    delete step files beyond the newest `keep_last`. Returns the step file."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(ckpt_dir)  # left by a save that was killed; only rank 0 saves
    path = ckpt_dir / step_file_name(step)
    with _save_errors(ckpt_dir, path, step):
        atomic_write(path, lambda f: torch.save(state, f))
        _link(path, ckpt_dir / "last.pt")
        if is_best:
            _link(path, ckpt_dir / "best.pt")
        fsync_dir(ckpt_dir)

        step_files = _step_files(ckpt_dir)
        doomed = {p.name for _, p in step_files[: max(len(step_files) - keep_last, 0)]}
        # One entry per file: last.pt (and best.pt when is_best) now point at this save.
        replaced = doomed | {"last.pt"} | ({"best.pt"} if is_best else set())
        entries = [
            e for e in read_log(ckpt_dir) if e.get("path") not in replaced and (ckpt_dir / str(e.get("path"))).is_file()
        ]
        if path.name not in doomed:
            entries.append({"step": step, "path": path.name, "val_loss": val_loss})
        entries.append({"step": step, "path": "last.pt", "val_loss": val_loss})
        if is_best:
            entries.append({"step": step, "path": "best.pt", "val_loss": val_loss})
        # The log first, then the deletions: a crash in between leaves stray files, never a log
        # that names a missing one. last.pt and best.pt are their own links and survive deletion.
        atomic_write(ckpt_dir / LOG_NAME, lambda f: yaml.safe_dump(entries, f, sort_keys=False), mode="w")
        for name in doomed:
            (ckpt_dir / name).unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _save_errors(ckpt_dir: Path, path: Path, step: int) -> Iterator[None]:
    """An OSError while saving (a full disk, a file size limit) becomes one paragraph. The temp
    files are gone by then (atomic_write removes its own), and last.pt is whole: the old one, or
    the new one when only the log could not be written."""
    try:
        yield
    except (OSError, RuntimeError) as failure:
        err = _os_error(failure)  # torch.save's zip writer re-raises a failed write as a RuntimeError
        if err is None:
            raise
        good = ckpt_dir / "last.pt"
        kept = f"The last checkpoint {good} is intact." if good.is_file() else "No earlier checkpoint exists."
        rerun = "then rerun the same command: it resumes from the last checkpoint."
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"The disk is full: could not write checkpoint {path} for step {step} ({err.strerror}). {kept} "
                f"Free space on that disk (or lower eval.keep_last, or point hydra.run.dir elsewhere), {rerun}"
            ) from err
        if err.errno == errno.EFBIG:
            raise CheckpointError(
                f"Checkpoint {path} for step {step} is larger than this process may write ({err.strerror}: the "
                f"file size limit, `ulimit -f`, or the filesystem's largest file). {kept} Raise the limit "
                f"(ulimit -f unlimited) or point hydra.run.dir at another filesystem, {rerun}"
            ) from err
        raise CheckpointError(
            f"Could not write checkpoint {path} for step {step} ({err}). {kept} Fix the cause, {rerun}"
        ) from err


def _os_error(err: BaseException | None) -> OSError | None:
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def read_log(ckpt_dir: Path) -> list[dict[str, Any]]:
    path = ckpt_dir / LOG_NAME
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


# ---- loading


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def candidates(ckpt_dir: Path) -> list[Path]:
    """The checkpoints in a directory, newest first: last.pt, step files, best.pt (each file once)."""
    paths = [ckpt_dir / "last.pt"] + [p for _, p in reversed(_step_files(ckpt_dir))] + [ckpt_dir / "best.pt"]
    seen, unique = set(), []
    for p in paths:
        if p.is_file() and (key := (p.stat().st_dev, p.stat().st_ino)) not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def newest_good_checkpoint(ckpt_dir: Path, skip: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    for path in candidates(ckpt_dir):
        if skip is not None and path.exists() and skip.exists() and os.path.samefile(path, skip):
            continue
        try:
            return path, _torch_load(path)
        except Exception:
            continue
    return None


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    good = newest_good_checkpoint(path.parent, skip=path)
    hint = (
        f"The newest checkpoint there that loads is {good[0]} (step {good[1].get('step', '?')}); pass that path "
        "instead."
        if good
        else f"No other checkpoint in {path.parent} loads either."
    )
    return CheckpointError(
        f"Checkpoint {path} could not be loaded ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}); "
        f"it is truncated, corrupt or not a nanugpt checkpoint. {hint}"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist; pass the path of a .pt file that nanugpt.train wrote (e.g. <run "
            "dir>/checkpoints/last.pt)."
        )
    try:
        return _torch_load(path, map_location)
    except Exception as err:
        raise _unreadable(path, err) from err


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the one to sample from in a run dir or its checkpoints dir:
    `best.pt` when the run kept one, else the newest checkpoint (through `checkpoint_log.yaml`)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir():
        return path
    if (path / "best.pt").is_file():
        return path / "best.pt"
    steps = {str(e["path"]): int(e.get("step", -1)) for e in read_log(path) if isinstance(e, dict) and "path" in e}
    # names only: the log is read, never trusted to point outside its directory
    named = [name for name in steps if Path(name).name == name and (path / name).is_file()]
    newest = max(named, key=steps.__getitem__, default=None)
    found = path / newest if newest else next(iter(candidates(path)), None)
    if found is None:
        raise CheckpointError(
            f"{path} holds no checkpoint (no best.pt, last.pt or step_*.pt); pass a run dir whose run saved one "
            "(eval.checkpoint must not be none), or the path of a .pt file."
        )
    return found


def find_resume_checkpoint(resume: str, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """resume=never: None. resume=<path>: that checkpoint, or a clear error. resume=auto: the
    newest checkpoint in <run dir>/checkpoints that loads, warning about any newer one that does
    not; None when there is none."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        return path, load_checkpoint(path)
    ckpt_dir = run_dir / "checkpoints"
    for path in candidates(ckpt_dir):
        try:
            return path, _torch_load(path)
        except Exception as err:
            log.warning(
                "Checkpoint %s could not be loaded (%s: %s); trying an older one.",
                path,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
    if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")):
        raise CheckpointError(
            f"No checkpoint in {ckpt_dir} loads: all are truncated or corrupt. Start over with "
            "resume=never (this overwrites them), or pass resume=<path> to a good checkpoint elsewhere."
        )
    return None


def load_model_state(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: Path,
    saved_model_cfg: dict | None,
    model_cfg: dict,
) -> None:
    """load_state_dict, but a checkpoint built for another model shape gets one paragraph
    naming both shapes and the fix instead of a wall of size-mismatch lines."""
    state_dict = strip_wrapper_prefixes(state_dict)
    own = model.state_dict()
    shape_diffs = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if not (shape_diffs or missing or unexpected):
        model.load_state_dict(state_dict)
        return
    cfg_diffs = []
    if saved_model_cfg:
        keys = [k for k in dict.fromkeys([*saved_model_cfg, *model_cfg]) if k != "_target_"]
        cfg_diffs = [
            f"model.{k}={saved_model_cfg.get(k)} (config: {model_cfg.get(k)})"
            for k in keys
            if saved_model_cfg.get(k) != model_cfg.get(k)
        ]
        if saved_model_cfg.get("_target_") != model_cfg.get("_target_"):
            cfg_diffs.insert(0, f"model={saved_model_cfg.get('_target_')} (config: {model_cfg.get('_target_')})")
    details = shape_diffs[:3] + [f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]]
    more = len(shape_diffs) + len(missing) + len(unexpected) - len(details)
    raise CheckpointError(
        f"Checkpoint {source} holds a different model than the config builds"
        + (f": the checkpoint has {', '.join(cfg_diffs)}" if cfg_diffs else "")
        + f". Mismatched tensors: {'; '.join(details)}{f' (and {more} more)' if more > 0 else ''}. "
        + "To continue that run, use the checkpoint's model settings"
        + (f" ({' '.join(d.split(' ')[0] for d in cfg_diffs if d.startswith('model.'))})" if cfg_diffs else "")
        + "; to train this config from scratch, pass resume=never or a new hydra.run.dir."
    )
