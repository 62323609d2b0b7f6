"""Prepared data: a corpus tokenized once into llm.c-format token shards plus `meta.json`.

Layout of one prepared directory (keyed by the data + tokenizer config, so a changed tokenizer
never reuses stale tokens):

    <data_dir>/<source>-<tokenizer>-<hash>/train_000000.bin  shards of data.shard_tokens tokens
                                          /train_000001.bin  (llm.c header, uint16 or uint32)
                                          /val_000000.bin
                                          /test_000000.bin   where the source has a test split
                                          /meta.json         written last: its presence means complete
                                          /partial/          progress of an unfinished prepare (resumable)

The shards are the format `data=shards` reads (`shards.read_shard`), read back by the same
reader; nothing is concatenated, so a 10B-token corpus is written once. Tokenizing runs on
`num_proc` processes with at most two pieces per process in flight, so memory is bounded by the
pieces in flight whatever the corpus size (shards stream to disk as tokens arrive).

Every file is written to a temp name, fsynced and renamed, and concurrent preparers (DDP ranks,
sweep jobs) serialise on a lock file, so a crash or a race never leaves a half-written dataset.
A complete, current directory is read without the lock, so it also works on read-only storage;
a corrupt one (a truncated shard, a torn meta.json) is named and prepared again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nanugpt.data.contract import TokenSplits
from nanugpt.data.shards import HEADER_BYTES, read_shard, shard_header
from nanugpt.data.source import TokenSource
from nanugpt.errors import ConfigError, UserError
from nanugpt.tokenizers.base import Tokenizer, is_fitted_kind, restore_tokenizer_state, token_dtype, tokenizer_state
from nanugpt.utils import atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: llm.c shards of data.shard_tokens; 1 was one headerless <split>.bin
REQUIRED_SPLITS = ("train", "val")


class CorruptCache(RuntimeError):
    """A prepared directory whose files do not match its meta.json (or whose meta.json is torn)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{problem}; delete {path} and it will be prepared again.")
        self.problem = problem


def cache_key(data_cfg: dict, tokenizer_cfg: dict) -> str:
    blob = json.dumps({"data": data_cfg, "tokenizer": tokenizer_cfg, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def prepared_dir(
    data_dir: str | Path, source: TokenSource, tokenizer: Tokenizer, data_cfg: dict, tokenizer_cfg: dict
) -> Path:
    return (
        Path(data_dir).expanduser().resolve() / f"{source.name}-{tokenizer.name}-{cache_key(data_cfg, tokenizer_cfg)}"
    )


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_prepared(path: Path) -> TokenSplits:
    """The prepared splits, memory-mapped, after checking each file against meta.json."""
    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
        dtype, vocab_size = np.dtype(meta["dtype"]), int(meta["vocab_size"])
        num_tokens = {str(split): int(n) for split, n in meta["num_tokens"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise CorruptCache(path, f"{meta_file} is torn or incomplete ({type(err).__name__}: {err})") from None
    if not set(REQUIRED_SPLITS) <= set(num_tokens):
        raise CorruptCache(path, f"{meta_file} lists the splits {sorted(num_tokens)}, not train and val")
    splits = {}
    for split, expected in num_tokens.items():
        names = meta.get("files", {}).get(split)
        if not isinstance(names, list) or not names:
            raise CorruptCache(path, f"{meta_file} lists no {split} shard files")
        try:
            shards = [read_shard(path / str(name)) for name in names]
        except (ConfigError, OSError) as err:
            raise CorruptCache(path, f"a {split} shard is missing or has the wrong size ({err})") from None
        found = sum(len(s) for s in shards)
        if found != expected or any(s.dtype != dtype for s in shards):
            raise CorruptCache(
                path,
                f"the {split} shards hold {found:,} tokens, not the {expected:,} {dtype.name} that {meta_file} records",
            )
        splits[split] = shards
    return TokenSplits(
        splits, vocab_size, meta, path, f"The prepared data is corrupt: delete {path} and it will be prepared again."
    )


def _load_current(path: Path, fingerprint: str, tokenizer: Tokenizer) -> tuple[TokenSplits | None, str]:
    """The prepared data if it is complete and of this source, else (None, why not)."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        return None, "it is not prepared yet"
    try:
        data = load_prepared(path)
    except CorruptCache as err:
        return None, err.problem
    if data.meta.get("source_sha256") != fingerprint:
        return None, "the source changed since it was prepared"
    restore_tokenizer_state(tokenizer, data.meta)
    return data, ""


def _start_work_dir(path: Path, work: Path, fingerprint: str, shard_tokens: int, force: bool) -> dict[str, Any]:
    """The progress of an interrupted prepare of the same source and shard size, to continue; else
    a fresh start with the old shards deleted."""
    progress_file = work / "progress.json"
    if not force and progress_file.is_file():
        progress = json.loads(progress_file.read_text())
        if progress.get("source_sha256") == fingerprint and progress.get("shard_tokens") == shard_tokens:
            done = sum(len(s["files"]) for s in progress["splits"].values())
            if done:
                log.info("Resuming an interrupted prepare: %d finished shard(s) in %s", done, path)
            return progress
    shutil.rmtree(work, ignore_errors=True)
    for old in path.glob("*.bin"):
        old.unlink()
    progress = {"source_sha256": fingerprint, "shard_tokens": shard_tokens, "splits": {}}
    atomic_write_json(progress_file, progress)
    return progress


# The source and tokenizer of the pool's workers: forked with them, never pickled.
_WORKER: tuple[TokenSource, Tokenizer, np.dtype] | None = None


def _encode(source: TokenSource, tokenizer: Tokenizer, dtype: np.dtype, piece: Any) -> np.ndarray:
    tokens = source.encode_piece(tokenizer, piece)
    if tokens.size and int(tokens.max()) >= tokenizer.vocab_size:
        raise ValueError(f"Tokenizer {tokenizer.name} produced id {int(tokens.max())} >= its vocab_size.")
    return tokens.astype(dtype)


def _encode_in_worker(piece: Any) -> np.ndarray:
    return _encode(*_WORKER, piece)  # type: ignore[misc]


def encoded_pieces(
    source: TokenSource, tokenizer: Tokenizer, dtype: np.dtype, pieces: Iterator[Any], num_proc: int
) -> Iterator[np.ndarray]:
    """Each piece's tokens, in order, tokenized on `num_proc` processes with at most 2 x num_proc
    pieces in flight (a pool's `imap` would read the whole corpus ahead into its queue)."""
    if num_proc == 1:
        for piece in pieces:
            yield _encode(source, tokenizer, dtype, piece)
        return
    global _WORKER
    _WORKER = (source, tokenizer, dtype)
    try:
        # fork: the workers inherit the source and tokenizer (a hub data set, a fitted BPE) as they are
        with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) as pool:
            in_flight: deque = deque()
            for piece in pieces:
                in_flight.append(pool.submit(_encode_in_worker, piece))
                if len(in_flight) >= 2 * num_proc:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
    finally:
        _WORKER = None


def _write_shard(path: Path, tokens: Iterator[np.ndarray], dtype: np.dtype) -> int:
    """Stream `tokens` into an llm.c shard at `path` (temp name, fsync, rename); its token count."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(HEADER_BYTES))  # the count is known at the end
            count = 0
            for chunk in tokens:
                f.write(memoryview(np.ascontiguousarray(chunk)))
                count += len(chunk)
            f.seek(0)
            f.write(shard_header(dtype, count))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return count
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_split(
    source: TokenSource,
    tokenizer: Tokenizer,
    split: str,
    path: Path,
    dtype: np.dtype,
    progress: dict[str, Any],
    progress_file: Path,
) -> list[str]:
    """Tokenize one split into shards of `source.shard_tokens` tokens; continue where `progress`
    says an interrupted prepare stopped (the piece and the token in it after its last shard)."""
    state = progress["splits"].setdefault(split, {"files": [], "piece": 0, "offset": 0, "done": False})
    if state["done"]:
        return state["files"]
    first, skip = state["piece"], state["offset"]
    pieces = itertools.islice(source.pieces(split), first, None)  # earlier pieces are in finished shards
    stream = encoded_pieces(source, tokenizer, dtype, pieces, source.num_proc)
    # where the stream stands: the piece being written, its tokens, and how many are written
    at = {"piece": first - 1, "tokens": np.zeros(0, dtype), "pos": 0}

    def next_shard_tokens() -> Iterator[np.ndarray]:
        wanted = source.shard_tokens
        while wanted:
            if at["pos"] == len(at["tokens"]):
                tokens = next(stream, None)
                if tokens is None:
                    return
                at["piece"] += 1
                at["tokens"], at["pos"] = tokens, skip if at["piece"] == first else 0
                continue
            take = min(wanted, len(at["tokens"]) - at["pos"])
            yield at["tokens"][at["pos"] : at["pos"] + take]
            at["pos"] += take
            wanted -= take

    bar = tqdm(desc=f"{split} shards", unit="shard", initial=len(state["files"]), disable=None)
    while True:
        name = f"{split}_{len(state['files']):06d}.bin"
        count = _write_shard(path / name, next_shard_tokens(), dtype)
        if count == 0 and state["files"]:
            (path / name).unlink()  # the stream ended exactly at a shard boundary
        else:
            state["files"].append(name)
            bar.update()
        state["piece"], state["offset"] = at["piece"], at["pos"]
        state["done"] = count < source.shard_tokens
        atomic_write_json(progress_file, progress)
        if state["done"]:
            break
    bar.close()
    return state["files"]


def _fit_tokenizer(tokenizer: Tokenizer, source: TokenSource, work: Path) -> None:
    """Learn a char vocab or BPE from the corpus once; a resumed prepare reuses what it learned."""
    if not (is_fitted_kind(tokenizer) and tokenizer.needs_fit):  # type: ignore[attr-defined]
        return
    saved = work / "tokenizer_state.json"
    if saved.is_file():
        tokenizer.load_state(json.loads(saved.read_text()))  # type: ignore[attr-defined]
        return
    log.info("Fitting the %s tokenizer on %s", tokenizer.name, source.name)
    tokenizer.fit({split: source.texts(split) for split in source.split_names})  # type: ignore[attr-defined]
    atomic_write_json(saved, tokenizer_state(tokenizer))


def prepare(
    source: TokenSource,
    tokenizer: Tokenizer,
    data_dir: str | Path,
    data_cfg: dict,
    tokenizer_cfg: dict,
    force: bool = False,
) -> TokenSplits:
    """Tokenize `source` into `data_dir` unless an up-to-date copy is there; return it loaded.

    Each split streams into shards of `source.shard_tokens` tokens, each written atomically, and
    `meta.json` is written last. An interrupted prepare rerun with the same source keeps its
    finished shards and continues after the last one (`partial/progress.json` says where).
    """
    path = prepared_dir(data_dir, source, tokenizer, data_cfg, tokenizer_cfg)
    fingerprint = source.fingerprint()
    why = "force=true"
    if not force:
        data, why = _load_current(path, fingerprint, tokenizer)  # no lock: read-only storage works
        if data is not None:
            return data
    try:
        with file_lock(path.with_name(path.name + ".lock")):
            if not force:  # another process may have prepared it while this one waited for the lock
                data, why = _load_current(path, fingerprint, tokenizer)
                if data is not None:
                    return data
                if (path / "meta.json").is_file():
                    log.warning("Preparing %s again: %s", path, why)
            return _prepare_locked(source, tokenizer, path, fingerprint, data_cfg, tokenizer_cfg, force)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise UserError(
            f"Cannot prepare {path} ({why}): writing {err.filename} failed ({err.strerror}). On read-only "
            "storage, prepare it where it can be written (paths.data_dir=/writable/dir or NANUGPT_DATA=...), "
            f"or have someone who can write there delete {path} so that it is prepared again."
        ) from None


def _prepare_locked(
    source: TokenSource,
    tokenizer: Tokenizer,
    path: Path,
    fingerprint: str,
    data_cfg: dict,
    tokenizer_cfg: dict,
    force: bool,
) -> TokenSplits:
    start = time.perf_counter()
    log.info("Preparing %s with the %s tokenizer into %s", source.name, tokenizer.name, path)
    meta_file = path / "meta.json"
    meta_file.unlink(missing_ok=True)  # the old tokens are about to be replaced
    work = path / "partial"
    progress = _start_work_dir(path, work, fingerprint, source.shard_tokens, force)
    _fit_tokenizer(tokenizer, source, work)
    dtype = token_dtype(tokenizer.vocab_size)
    files, num_tokens = {}, {}
    for split in source.split_names:
        files[split] = _write_split(source, tokenizer, split, path, dtype, progress, work / "progress.json")
        num_tokens[split] = sum(len(read_shard(path / name)) for name in files[split])
        log.info("  %s: %s tokens in %d shard(s)", split, f"{num_tokens[split]:,}", len(files[split]))
    meta = {
        "format": FORMAT_VERSION,
        "source": source.name,
        "source_sha256": fingerprint,
        "tokenizer": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "shard_tokens": source.shard_tokens,
        "files": files,
        "data_config": data_cfg,
        "tokenizer_config": tokenizer_cfg,
        "seconds": round(time.perf_counter() - start, 3),
    }
    state = tokenizer_state(tokenizer)
    if state is not None:
        meta["tokenizer_state"] = state
    atomic_write_json(meta_file, meta)  # last: its presence marks the directory complete
    shutil.rmtree(work, ignore_errors=True)
    log.info("Prepared in %.1f s", meta["seconds"])
    return load_prepared(path)
