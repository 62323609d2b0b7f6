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

FSDP runs (`training.parallel=fsdp`) save sharded checkpoints instead: a directory per save,
`step_0000200/`, written with torch.distributed.checkpoint (DCP), every rank its own shard of the
model and optimizer tensors, plus `state.pt` (step, RNG states, data position, config: rank 0's,
as in a file checkpoint). All ranks write into `.step_0000200.tmp/`; rank 0 renames it into place
only after every rank has finished (DCP's closing collective writes `.metadata` last), so a
directory exists complete or not at all. `last` and `best` are symlinks to step directories,
swapped by renaming a fresh link over the old one; the log lists directories as it lists files.
A sharded checkpoint loads on any number of ranks (DCP reshards), also into a run without FSDP,
and `python -m nanugpt.checkpoint consolidate <dir> [out.pt]` writes its model as one file.

Loads use `torch.load(weights_only=True)`: a checkpoint is untrusted input and must not be able
to run code. So everything saved is tensors and plain Python containers. DCP would unpickle its
`.metadata` and any non-tensor entry with plain pickle, so a sharded checkpoint holds tensors
only (its plain part is `state.pt`), its metadata is read by an unpickler that knows only DCP's
own metadata classes, and a load refuses non-tensor entries.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import pickle
import random
import re
import shutil
import warnings
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
STEP_DIR = re.compile(r"^step_(\d+)$")
PLAIN_STATE = "state.pt"  # a sharded checkpoint's non-tensor part
# The pointers to the newest and the best save: hard links for files, symlinks for directories.
POINTERS = {"last": ("last.pt", "last"), "best": ("best.pt", "best")}


def step_file_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def pointer(ckpt_dir: Path, which: str) -> Path | None:
    """`last` or `best` of a checkpoints dir: the file (last.pt) or the sharded directory (last)
    that exists, else None."""
    file_name, dir_name = POINTERS[which]
    if (ckpt_dir / file_name).is_file():
        return ckpt_dir / file_name
    return ckpt_dir / dir_name if (ckpt_dir / dir_name).is_dir() else None


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
    """Point `dst` at `src` atomically: for a file a hard link (a copy where the filesystem has
    none), for a directory a relative symlink, renamed over `dst`."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    if src.is_dir():
        os.symlink(src.name, tmp)
    else:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as source:
                atomic_write(tmp, lambda f: shutil.copyfileobj(source, f))
    os.replace(tmp, dst)


def _step_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """The step checkpoints, files (`step_*.pt`) and sharded directories (`step_*`), by step."""
    found = []
    for p in ckpt_dir.glob("step_*"):
        kind = STEP_DIR if p.is_dir() and not p.is_symlink() else STEP_FILE if p.is_file() else None
        if kind is not None and (m := kind.match(p.name)):
            found.append((int(m.group(1)), p))
    return sorted(found)


def _remove(path: Path) -> None:
    """Delete a step file, or a step directory: renamed to a temp name first, so a kill halfway
    leaves no half directory under a step name (the next save clears temp names)."""
    if path.is_dir() and not path.is_symlink():
        doomed = path.with_name(f".{path.name}.old.tmp")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    else:
        path.unlink(missing_ok=True)


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
        _commit(ckpt_dir, path, step, val_loss, is_best, keep_last)
    return path


def save_sharded_checkpoint(
    ckpt_dir: Path,
    tensors: dict[str, Any],
    plain: dict[str, Any],
    step: int,
    val_loss: float | None,
    is_best: bool,
    keep_last: int,
    is_master: bool,
) -> Path:
    """A collective: every rank writes its shards of `tensors` (DTensors, or plain tensors every
    rank holds alike) into `.step_<step>.tmp/` with DCP; rank 0 adds `plain` as state.pt, renames
    the directory into place, points `last` (and `best`) at it, logs it and deletes saves beyond
    `keep_last`, as `save_checkpoint` does for files. Returns the step directory."""
    import torch.distributed.checkpoint as dcp

    path = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f".{path.name}.tmp"
    if is_master:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(ckpt_dir)  # what a killed save left, before any rank writes a new one
    if torch_dist.is_initialized():
        torch_dist.barrier()
    with _save_errors(ckpt_dir, path, step):
        # Returns on every rank only once all ranks' files are written and rank 0 has written
        # .metadata (DCP's closing collective): the directory is complete here, before the rename.
        dcp.save(tensors, checkpoint_id=tmp)
        if is_master:
            atomic_write(tmp / PLAIN_STATE, lambda f: torch.save(plain, f))
            if path.exists():  # the same step saved again (a run restarted with resume=never)
                _remove(path)
            os.replace(tmp, path)
            fsync_dir(ckpt_dir)
            _commit(ckpt_dir, path, step, val_loss, is_best, keep_last)
    return path


def _commit(ckpt_dir: Path, path: Path, step: int, val_loss: float | None, is_best: bool, keep_last: int) -> None:
    """After a save is in place: point last (and best) at it, rewrite the log, delete the step
    saves beyond `keep_last` (never the one a `last`/`best` symlink names)."""
    pointed = ["last", "best"] if is_best else ["last"]
    names = set()
    for which in pointed:
        file_name, dir_name = POINTERS[which]
        own, other = (dir_name, file_name) if path.is_dir() else (file_name, dir_name)
        _link(path, ckpt_dir / own)
        # One last and one best: a save in the other format (a run resumed with another
        # training.parallel) replaces that format's pointer too.
        (ckpt_dir / other).unlink(missing_ok=True)
        names |= {file_name, dir_name}
    fsync_dir(ckpt_dir)

    step_files = _step_files(ckpt_dir)
    linked = {(ckpt_dir / name).resolve() for name in ("last", "best") if (ckpt_dir / name).is_symlink()}
    doomed = {p.name for _, p in step_files[: max(len(step_files) - keep_last, 0)] if p.resolve() not in linked}
    # One entry per file or directory: last and best (when is_best) now point at this save.
    replaced = doomed | names
    entries = [
        e for e in read_log(ckpt_dir) if e.get("path") not in replaced and (ckpt_dir / str(e.get("path"))).exists()
    ]
    if path.name not in doomed:
        entries.append({"step": step, "path": path.name, "val_loss": val_loss})
    for which in pointed:
        entries.append({"step": step, "path": POINTERS[which][path.is_dir()], "val_loss": val_loss})
    # The log first, then the deletions: a crash in between leaves stray files, never a log
    # that names a missing one. last.pt and best.pt are their own links and survive deletion.
    atomic_write(ckpt_dir / LOG_NAME, lambda f: yaml.safe_dump(entries, f, sort_keys=False), mode="w")
    for name in doomed:
        _remove(ckpt_dir / name)


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


def load_plain(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file, or a sharded checkpoint's plain part (everything but the model and
    optimizer tensors): what resume=auto checks a checkpoint by."""
    if not path.is_dir():
        return _torch_load(path, map_location)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} has no .metadata: it is not a complete sharded checkpoint.")
    return _torch_load(path / PLAIN_STATE, map_location)


def candidates(ckpt_dir: Path) -> list[Path]:
    """The checkpoints in a directory, newest first: last, step files and directories, best (each
    once; last and best as a file, last.pt, or an FSDP run's directory symlink, last)."""
    steps = [p for _, p in reversed(_step_files(ckpt_dir))]
    paths = [pointer(ckpt_dir, "last"), *steps, pointer(ckpt_dir, "best")]
    seen, unique = set(), []
    for p in paths:
        if p is not None and (key := (p.stat().st_dev, p.stat().st_ino)) not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _log_entries(ckpt_dir: Path) -> list[dict[str, Any]]:
    try:
        return [e for e in read_log(ckpt_dir) if isinstance(e, dict) and "path" in e]
    except (yaml.YAMLError, TypeError, ValueError):
        return []


def newest_good_checkpoint(ckpt_dir: Path, skip: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    for path in candidates(ckpt_dir):
        if skip is not None and path.exists() and skip.exists() and os.path.samefile(path, skip):
            continue
        try:
            return path, load_plain(path)
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
    """A checkpoint file, or a sharded directory consolidated in memory (model weights and the
    plain part; no optimizer state): what `generate` samples from."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint {path} does not exist; pass the path of a .pt file or sharded checkpoint directory that "
            "nanugpt.train wrote (e.g. <run dir>/checkpoints/last.pt, or <run dir>/checkpoints/last for FSDP runs)."
        )
    try:
        return consolidate(path) if path.is_dir() else _torch_load(path, map_location)
    except CheckpointError:
        raise
    except Exception as err:
        raise _unreadable(path, err) from err


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint as given (a file, or a sharded directory), or the one to sample from in a run
    dir or its checkpoints dir: best when the run kept one, else the newest (through
    `checkpoint_log.yaml`)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir() or (path / ".metadata").is_file():
        return path
    if (best := pointer(path, "best")) is not None:
        return best
    steps = {str(e["path"]): int(e.get("step", -1)) for e in _log_entries(path)}
    # names only: the log is read, never trusted to point outside its directory
    named = [name for name in steps if Path(name).name == name and (path / name).exists()]
    newest = max(named, key=steps.__getitem__, default=None)
    found = path / newest if newest else next(iter(candidates(path)), None)
    if found is None:
        raise CheckpointError(
            f"{path} holds no checkpoint (no best.pt, last.pt or step_*.pt, nor a sharded last/ or step_*/); pass "
            "a run dir whose run saved one (eval.checkpoint must not be none), or the path of a checkpoint."
        )
    return found


def find_resume_checkpoint(resume: str, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """resume=never: None. resume=<path>: that checkpoint, or a clear error. resume=auto: the
    newest checkpoint in <run dir>/checkpoints that loads, warning about any newer one that does
    not; None when there is none. For a sharded checkpoint the dict is its plain part: the
    tensors load with `load_sharded`."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if path.is_dir():
            try:
                return path, load_plain(path)
            except Exception as err:
                raise _unreadable(path, err) from err
        return path, load_checkpoint(path)
    ckpt_dir = run_dir / "checkpoints"
    for path in candidates(ckpt_dir):
        try:
            return path, load_plain(path)
        except Exception as err:
            log.warning(
                "Checkpoint %s could not be loaded (%s: %s); trying an older one.",
                path,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
    if ckpt_dir.is_dir() and (any(ckpt_dir.glob("*.pt")) or _step_files(ckpt_dir)):
        raise CheckpointError(
            f"No checkpoint in {ckpt_dir} loads: all are truncated or corrupt. Start over with "
            "resume=never (this overwrites them), or pass resume=<path> to a good checkpoint elsewhere."
        )
    return None


# ---- sharded checkpoints: safe DCP loading, resharding, consolidation

# Every global a DCP checkpoint's .metadata pickle names (torch 2.13), besides torch's dtypes.
DCP_METADATA_GLOBALS = {
    ("pathlib", "PosixPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "ChunkStorageMetadata",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Plain pickle, but only DCP's own metadata classes: an untrusted .metadata runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP checkpoint's metadata; refusing to load it")


@functools.cache
def _safe_dcp() -> tuple[type, type]:
    """DCP's file reader and load planner, made safe for untrusted checkpoints (built on first use:
    torch.distributed.checkpoint costs import time)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class TensorsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            raise CheckpointError(
                f"The sharded checkpoint holds a non-tensor entry {read_item.dest_index.fqn!r}. nanugpt's sharded "
                "checkpoints hold tensors only (their other state is in state.pt), so this one was not written by "
                "nanugpt.train; it is not loaded, since unpickling it could run code."
            )

    return SafeReader, TensorsOnlyPlanner


def load_sharded(path: Path, tensors: dict[str, Any]) -> None:
    """Fill `tensors` (nested dicts of tensors or DTensors, as saved) in place from a sharded
    checkpoint: DCP reads each rank's part of every tensor, whatever the number of ranks that
    wrote it. A collective when a process group is up."""
    import torch.distributed.checkpoint as dcp

    reader, planner = _safe_dcp()
    with warnings.catch_warnings():  # without a process group DCP warns that it loads in one process: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(tensors, storage_reader=reader(path), planner=planner())
        except dcp.api.CheckpointException as err:  # DCP wraps each rank's exception: ours says what happened
            ours = [e for e, _ in err.failures.values() if isinstance(e, CheckpointError)]
            if ours:
                raise ours[0] from None
            raise


def consolidate(path: Path) -> dict[str, Any]:
    """A sharded checkpoint as a single-file one: its model's full tensors plus its plain part
    (config, data meta, step), without the optimizer state. torch's `dcp_to_torch_save` would do
    this but unpickles whatever the checkpoint holds; this reads tensors only."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    plain = load_plain(path)
    reader, _ = _safe_dcp()
    saved = reader(path).read_metadata().state_dict_metadata
    model = {
        fqn.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
        for fqn, meta in saved.items()
        if fqn.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    load_sharded(path, {"model": model})
    return {**plain, "model": model}


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


def consolidate_main(argv: list[str] | None = None) -> Path:
    """`python -m nanugpt.checkpoint consolidate <sharded dir, checkpoints dir or run dir> [out.pt]`:
    the model as one file, for `generate` and plain `torch.load`.
    Default out: `<checkpoints dir>/<step dir>.consolidated.pt`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nanugpt.checkpoint", description=consolidate_main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("consolidate", help="write a sharded (FSDP) checkpoint's model as one .pt file")
    command.add_argument("checkpoint", type=Path, help="a sharded checkpoint dir (e.g. checkpoints/last), or a run dir")
    command.add_argument("out", type=Path, nargs="?", help="the .pt file to write")
    args = parser.parse_args(argv)
    source = resolve_checkpoint(args.checkpoint)
    if not source.is_dir():
        raise CheckpointError(
            f"{source} is a single-file checkpoint already; generate reads it as it is. consolidate takes a sharded "
            "checkpoint directory (an FSDP run's checkpoints/last or step_*), or the run dir of an FSDP run."
        )
    state = load_checkpoint(source)
    out = args.out or source.parent / f"{source.resolve().name}.consolidated.pt"
    atomic_write(out, lambda f: torch.save(state, f))
    print(f"Wrote {out} (step {state.get('step', '?')}, {len(state['model'])} tensors) from {source}.")
    return out


if __name__ == "__main__":
    from nanugpt.errors import UserError

    try:
        consolidate_main()
    except UserError as err:
        raise SystemExit(f"Error: {err}") from None
