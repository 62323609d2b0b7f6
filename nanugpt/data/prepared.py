"""Prepared data: a corpus tokenized once into flat memmap token arrays plus `meta.json`.

Layout of one prepared directory (keyed by the data + tokenizer config, so a changed tokenizer
never reuses stale tokens):

    <data_dir>/<source>-<tokenizer>-<hash>/train.bin   flat token ids (uint16 or uint32)
                                          /val.bin
                                          /test.bin     where the source has a test split
                                          /meta.json    written last: its presence means complete
                                          /partial/     shards of an unfinished prepare (resumable)

Every file is written to a temp name, fsynced and renamed, and concurrent preparers (DDP ranks,
sweep jobs) serialise on a lock file, so a crash or a race never leaves a half-written dataset.
A complete, current directory is read without the lock, so it also works on read-only storage;
a corrupt one (a truncated .bin, a torn meta.json) is named and prepared again.

Each split loads as a list of shards (`contract.TokenSplits`), here one per split. Writing the
`partial/` shards as the final files instead of concatenating them needs only `meta.json` to
list each split's files and `load_prepared` to map each of them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nanugpt.data.contract import TokenSplits
from nanugpt.data.source import TokenSource
from nanugpt.errors import UserError
from nanugpt.tokenizers.base import Tokenizer, is_fitted_kind, restore_tokenizer_state, token_dtype, tokenizer_state
from nanugpt.utils import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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
        file = path / f"{split}.bin"
        if not file.is_file() or file.stat().st_size != expected * dtype.itemsize:
            raise CorruptCache(
                path, f"{file} is missing or has the wrong size for the {expected:,} tokens that {meta_file} records"
            )
        splits[split] = [np.memmap(file, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)]
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


def _write_tokens(path: Path, tokens: np.ndarray) -> None:
    atomic_write(path, lambda f: f.write(tokens.tobytes()))


def _concatenate(parts: list[Path], path: Path) -> None:
    def write(out: Any) -> None:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)

    atomic_write(path, write)


def _start_work_dir(work: Path, fingerprint: str, force: bool) -> None:
    """Keep the finished shards of an interrupted prepare of the same source; else start empty."""
    progress = work / "progress.json"
    if not force and progress.is_file() and json.loads(progress.read_text()).get("source_sha256") == fingerprint:
        done = len(list(work.glob("*.bin")))
        if done:
            log.info("Resuming an interrupted prepare: %d finished shard(s) in %s", done, work)
        return
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(progress, {"source_sha256": fingerprint})


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

    Each shard is tokenized and written atomically to `<dir>/partial/`, then each split's shards
    are concatenated into `<split>.bin`, and `meta.json` is written last. An interrupted prepare
    rerun with the same source keeps its finished shards and continues.
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
    _start_work_dir(work, fingerprint, force)
    _fit_tokenizer(tokenizer, source, work)
    dtype = token_dtype(tokenizer.vocab_size)
    num_tokens = {}
    for split in source.split_names:
        n = source.num_shards(split)
        parts = [work / f"{split}-{i:05d}.bin" for i in range(n)]
        todo = [i for i, part in enumerate(parts) if not part.is_file()]  # atomic: present = complete
        bar = tqdm(total=n, initial=n - len(todo), desc=f"{split} shards", unit="shard", disable=n == 1)
        for i in todo:
            tokens = source.tokenize_shard(tokenizer, split, i)
            if tokens.size and int(tokens.max()) >= tokenizer.vocab_size:
                raise ValueError(f"Tokenizer {tokenizer.name} produced id {int(tokens.max())} >= its vocab_size.")
            _write_tokens(parts[i], tokens.astype(dtype))
            bar.update()
        bar.close()
        _concatenate(parts, path / f"{split}.bin")
        num_tokens[split] = (path / f"{split}.bin").stat().st_size // dtype.itemsize
        log.info("  %s: %s tokens", split, f"{num_tokens[split]:,}")
    meta = {
        "format": FORMAT_VERSION,
        "source": source.name,
        "source_sha256": fingerprint,
        "tokenizer": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "dtype": dtype.name,
        "num_tokens": num_tokens,
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
