"""Data sets through Hugging Face `datasets`: tinystories, wikitext103, openwebtext, fineweb_edu_10b, fineweb_10b,
or any hub id / local files (`data.path=parquet data.data_files=...`) with a text column.

Prepare reads each split in pieces of `shard_docs` documents, tokenizes them on `num_proc`
processes, and writes shards of `shard_tokens` tokens, so a corpus larger than memory streams
through, and an interrupted prepare continues from its last finished shard.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import ListConfig, OmegaConf

from nanugpt.data.source import check_prepare_options, decoded_chunks
from nanugpt.errors import ConfigError, UnavailableInputError, check_value
from nanugpt.tokenizers.base import Tokenizer, eot_id

SPLIT_SEED = 2357  # nanoGPT's openwebtext val split seed
HUB_PROBE_TIMEOUT_S = 10.0
TEXT_BUILDERS = ("text", "csv", "json")  # `datasets` builders that read local files as UTF-8 text


def check_hub_reachable(endpoint: str) -> None:
    """Raise a ConnectionError at once if the hub at `endpoint` cannot be reached: without network
    the hub clients retry for half a minute or more before they give up. Skipped behind a proxy
    (only the client knows how to go through it)."""
    url = urllib.parse.urlsplit(endpoint)
    proxies = urllib.request.getproxies()
    if proxies.get(url.scheme) or proxies.get("all"):
        return
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectionError(f"the hub at {endpoint} cannot be reached ({err})") from None


def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    batch = getattr(tokenizer, "encode_batch", None)  # tiktoken and HF tokenizers encode in parallel
    return batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]


def encode_docs(
    batch: dict[str, list], tokenizer: Tokenizer, text_field: str, eot: int | None, separator: str
) -> dict[str, list]:
    texts = batch[text_field] if eot is not None or not separator else [t + separator for t in batch[text_field]]
    ids = encode_texts(tokenizer, texts)
    if eot is not None:
        ids = [np.append(a, eot) for a in ids]
    return {"ids": ids}


def local_files(data_files: Any) -> list[str]:
    """Every local file that data_files names (strings, lists, or a split -> files mapping)."""
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return sorted(glob.glob(os.path.expanduser(data_files)))
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in local_files(v)]
    return [f for v in data_files for f in local_files(v)]


class HubDataset:
    def __init__(
        self,
        name: str,
        path: str,
        hub_config: str | None,
        revision: str | None,
        data_files: Any,
        train_split: str,
        val_split: str | None,
        val_fraction: float,
        test_split: str | None,
        text_field: str,
        eot_between_docs: bool,
        text_separator: str,
        max_docs: int | None,
        shard_docs: int,
        shard_tokens: int | None,
        num_proc: int | None,
        cache_dir: str | None,
    ) -> None:
        check_value("data.name", name, str)
        check_value(
            "data.path", path, str, fix="A hub id (roneneldan/TinyStories) or a builder (parquet, json, arrow)."
        )
        check_value("data.hub_config", hub_config, str, null="the data set's default config")
        check_value("data.revision", revision, str, null="the latest")
        if not (data_files is None or isinstance(data_files, (str, list, ListConfig, Mapping))):
            raise ConfigError(
                f"data.data_files={data_files!r} is a {type(data_files).__name__}: it must be a path or glob, a list "
                "of them, a split -> files mapping (data.data_files={train:/a.parquet,validation:/b.parquet}), or null."
            )
        check_value("data.train_split", train_split, str)
        check_value("data.val_split", val_split, str, null="hold out data.val_fraction of train")
        check_value("data.val_fraction", val_fraction, float, gt=0, lt=1, fix="E.g. data.val_fraction=0.0005.")
        check_value("data.test_split", test_split, str, null="no test evaluation")
        check_value(
            "data.text_field", text_field, str, fix="The column that holds the text, e.g. data.text_field=text."
        )
        check_value("data.eot_between_docs", eot_between_docs, bool)
        if not isinstance(text_separator, str):
            raise ConfigError(
                f"data.text_separator={text_separator!r} is a {type(text_separator).__name__}: it must be a string "
                "(empty for none), e.g. 'data.text_separator=\"\\n\\n\"'."
            )
        check_value("data.max_docs", max_docs, int, ge=1, null="every document")
        check_value("data.shard_docs", shard_docs, int, ge=1)
        check_value("data.cache_dir", cache_dir, str, null="the Hugging Face default, under HF_HOME")
        self.name, self.path, self.hub_config, self.revision = name, path, hub_config, revision
        # hydra passes nested config as DictConfig; datasets and the fingerprint want plain values
        self.data_files = (
            OmegaConf.to_container(data_files, resolve=True) if OmegaConf.is_config(data_files) else data_files
        )
        self.train_split, self.val_split, self.val_fraction = train_split, val_split, val_fraction
        self.test_split = test_split
        self.split_names = ("train", "val", "test") if test_split else ("train", "val")
        self.text_field, self.eot_between_docs, self.text_separator = text_field, eot_between_docs, text_separator
        self.max_docs, self.shard_docs = max_docs, shard_docs
        self.shard_tokens, self.num_proc = check_prepare_options(shard_tokens, num_proc)
        self.cache_dir = cache_dir

    def fingerprint(self) -> str:
        """The config plus each local file's size and mtime: no network, no full read. A hub data
        set is identified by its id and revision (pin data.revision for a reproducible corpus)."""
        files = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in local_files(self.data_files)]
        blob = json.dumps(
            [
                self.path,
                self.hub_config,
                self.revision,
                self.data_files,
                files,
                self.val_split,
                self.val_fraction,
                self.max_docs,
                self.text_field,
                *([self.test_split] if self.test_split else []),  # absent: fingerprints of before stay valid
            ],
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _load(self) -> Any:
        import datasets  # imported here: a plain text run never pays for it

        try:
            self._check_hub_reachable()
            return datasets.load_dataset(
                self.path,
                self.hub_config,
                data_files=self.data_files,
                revision=self.revision,
                cache_dir=self.cache_dir,
                num_proc=self.num_proc,
            )
        except Exception as err:  # the hub client raises many kinds; all mean "could not load"
            self._refuse_undecodable_local_file(err)
            where = f"{self.path!r}" + (f" (config {self.hub_config!r})" if self.hub_config else "")
            raise UnavailableInputError(
                f"Could not load the data set {where} for data={self.name}: {type(err).__name__}: {err}. "
                "If this machine is offline: prepare on a machine with network "
                f"(python -m nanugpt.prepare data={self.name} tokenizer=...) and copy the prepared "
                "directory under paths.data_dir; or set HF_HUB_OFFLINE=1 with the data set already in "
                "the Hugging Face cache; or load local copies with data.path=parquet (or json, arrow) "
                "data.data_files=/path/to/files."
            ) from None

    def _refuse_undecodable_local_file(self, err: BaseException) -> None:
        """A text, CSV or JSON builder stops at the first byte that is not UTF-8 with a message that
        names neither the file nor the offset (a DatasetGenerationError wraps the UnicodeDecodeError):
        find the file and say where."""
        while err is not None and not isinstance(err, UnicodeDecodeError):
            err = err.__cause__ or err.__context__
        if err is None or self.path not in TEXT_BUILDERS:
            return
        fix = (
            f"The {self.path} builder reads UTF-8 only: convert it (e.g. iconv -f latin1 -t utf-8 in.txt > out.txt), "
            "or leave it out of data.data_files."
        )
        for file in local_files(self.data_files):
            deque(decoded_chunks(Path(file), "utf-8", fix), maxlen=0)  # raises at the first bad byte

    def _check_hub_reachable(self) -> None:
        """One connection attempt instead of the client's retries; skipped for local files and in
        offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: `datasets` reads only its cache)."""
        from datasets import config
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

        offline = getattr(config, "HF_HUB_OFFLINE", False) or getattr(config, "HF_DATASETS_OFFLINE", False)
        local = self.path in _PACKAGED_DATASETS_MODULES or os.path.exists(self.path)
        if not (offline or local):
            check_hub_reachable(config.HF_ENDPOINT)

    @cached_property
    def splits(self) -> dict[str, Any]:
        loaded = self._load()
        if self.train_split not in loaded:
            raise ConfigError(
                f"data.train_split={self.train_split} is not a split of {self.path}; it has {', '.join(loaded)}."
            )
        if self.val_split is not None:
            if self.val_split not in loaded:
                raise ConfigError(
                    f"data.val_split={self.val_split} is not a split of {self.path}; it has {', '.join(loaded)}. "
                    "Pick one of those, or data.val_split=null to hold out data.val_fraction of train."
                )
            train, val = loaded[self.train_split], loaded[self.val_split]
        else:
            held_out = loaded[self.train_split].train_test_split(
                test_size=self.val_fraction, seed=SPLIT_SEED, shuffle=True
            )
            train, val = held_out["train"], held_out["test"]
        if self.text_field not in train.column_names:
            raise ConfigError(
                f"data.text_field={self.text_field} is not a column of {self.path}; it has "
                f"{', '.join(train.column_names)}."
            )
        splits = {"train": train, "val": val}
        if self.test_split is not None:
            if self.test_split not in loaded:
                raise ConfigError(
                    f"data.test_split={self.test_split} is not a split of {self.path}; it has "
                    f"{', '.join(loaded)}. Pick one of those, or data.test_split=null for no test evaluation."
                )
            splits["test"] = loaded[self.test_split]
        if self.max_docs is not None:
            splits = {name: d.select(range(min(len(d), self.max_docs))) for name, d in splits.items()}
        return splits

    def _separator(self, tokenizer: Tokenizer | None) -> tuple[int | None, str]:
        eot = eot_id(tokenizer) if tokenizer is not None and self.eot_between_docs else None
        return eot, self.text_separator

    def texts(self, split: str) -> Iterator[str]:
        docs = self.splits[split]
        for start in range(0, len(docs), 1000):
            yield "".join(t + self.text_separator for t in docs[start : start + 1000][self.text_field])

    def pieces(self, split: str) -> Iterator[list[str]]:
        docs = self.splits[split]
        for start in range(0, len(docs), self.shard_docs):
            yield docs[start : start + self.shard_docs][self.text_field]

    def encode_piece(self, tokenizer: Tokenizer, piece: list[str]) -> np.ndarray:
        eot, separator = self._separator(tokenizer)
        ids = encode_docs({"text": piece}, tokenizer, "text", eot, separator)["ids"]
        return np.concatenate([np.zeros(0, np.int64), *ids])
