"""Prepared data: a corpus tokenized once into flat memmap token arrays plus `meta.json`.

Layout of one prepared directory (keyed by the data + tokenizer config, so a changed tokenizer
never reuses stale tokens):

    <data_dir>/<source>-<tokenizer>-<hash>/train.bin   flat token ids (uint16 or uint32)
                                          /val.bin
                                          /meta.json    written last: its presence means complete
                                          /partial/     shards of an unfinished prepare (resumable)

Every file is written to a temp name, fsynced and renamed, and concurrent preparers (DDP ranks,
sweep jobs) serialise on a lock file, so a crash or a race never leaves a half-written dataset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nanugpt.data.source import TokenSource
from nanugpt.tokenizers.base import Tokenizer, is_fitted_kind, restore_tokenizer_state, token_dtype, tokenizer_state
from nanugpt.utils import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class PreparedData:
    path: Path
    meta: dict[str, Any]
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val}[name]


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


def load_prepared(path: Path) -> PreparedData:
    meta = json.loads((path / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split in SPLITS:
        file = path / f"{split}.bin"
        expected = meta["num_tokens"][split]
        if not file.is_file() or file.stat().st_size != expected * dtype.itemsize:
            raise RuntimeError(
                f"Prepared data {file} is missing or has the wrong size for the {expected:,} tokens "
                f"that {path / 'meta.json'} records; delete {path} and it will be prepared again."
            )
        arrays[split] = np.memmap(file, dtype=dtype, mode="r")
    return PreparedData(path, meta, arrays["train"], arrays["val"])


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
    tokenizer.fit({split: source.texts(split) for split in SPLITS})  # type: ignore[attr-defined]
    atomic_write_json(saved, tokenizer_state(tokenizer))


def prepare(
    source: TokenSource,
    tokenizer: Tokenizer,
    data_dir: str | Path,
    data_cfg: dict,
    tokenizer_cfg: dict,
    force: bool = False,
) -> PreparedData:
    """Tokenize `source` into `data_dir` unless an up-to-date copy is there; return it loaded.

    Each shard is tokenized and written atomically to `<dir>/partial/`, then each split's shards
    are concatenated into `<split>.bin`, and `meta.json` is written last. An interrupted prepare
    rerun with the same source keeps its finished shards and continues.
    """
    path = prepared_dir(data_dir, source, tokenizer, data_cfg, tokenizer_cfg)
    with file_lock(path.with_name(path.name + ".lock")):
        fingerprint = source.fingerprint()
        meta_file = path / "meta.json"
        if meta_file.is_file() and not force:
            meta = json.loads(meta_file.read_text())
            if meta.get("source_sha256") == fingerprint:
                restore_tokenizer_state(tokenizer, meta)
                return load_prepared(path)
            log.info("Source changed since %s was prepared; preparing it again.", path)

        start = time.perf_counter()
        log.info("Preparing %s with the %s tokenizer into %s", source.name, tokenizer.name, path)
        meta_file.unlink(missing_ok=True)  # the old tokens are about to be replaced
        work = path / "partial"
        _start_work_dir(work, fingerprint, force)
        _fit_tokenizer(tokenizer, source, work)
        dtype = token_dtype(tokenizer.vocab_size)
        num_tokens = {}
        for split in SPLITS:
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
