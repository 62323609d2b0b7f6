"""Sources: where a corpus comes from, how it splits into train and val, and how prepare reads it.

`prepare` reads any `TokenSource`: a corpus in shards (one for an in-memory text, many for a
hub data set), each tokenized and written on its own, so a large corpus streams to disk and an
interrupted prepare continues from the last finished shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import cached_property
from typing import Protocol

import numpy as np

from nanugpt.errors import check_value
from nanugpt.tokenizers.base import Tokenizer

TEXT_PIECE_CHARS = 1 << 20


class TokenSource(Protocol):
    name: str
    split_names: tuple[str, ...]  # ("train", "val"), plus "test" where the corpus has one

    def fingerprint(self) -> str:
        """Identifies the content, so a changed corpus is never served from a stale cache."""
        ...

    def texts(self, split: str) -> Iterator[str]:
        """The split's text in pieces, for tokenizers learned from the corpus (char, BPE)."""
        ...

    def num_shards(self, split: str) -> int: ...

    def tokenize_shard(self, tokenizer: Tokenizer, split: str, index: int) -> np.ndarray:
        """Token ids of one shard; shards of a split concatenate in index order."""
        ...


class TextSource:
    """Base class for corpora that fit in memory as one string.

    Subclasses implement `read_text()`. The split is by position: the first
    `1 - val_fraction` of the text trains, the rest validates, so the split is fixed and needs
    no seed.
    """

    name = "text"
    split_names = ("train", "val")

    def __init__(self, val_fraction: float) -> None:
        check_value(
            "data.val_fraction",
            val_fraction,
            float,
            gt=0,
            lt=1,
            fix="E.g. data.val_fraction=0.1 holds out the last 10% for validation.",
        )
        self.val_fraction = val_fraction

    def read_text(self) -> str:
        raise NotImplementedError

    @cached_property
    def text(self) -> str:
        return self.read_text()

    def fingerprint(self) -> str:
        """Identifies the source's content, so changed files are never served from a stale cache."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def splits(self) -> dict[str, str]:
        cut = int(len(self.text) * (1.0 - self.val_fraction))
        return {"train": self.text[:cut], "val": self.text[cut:]}

    # TokenSource: the whole split is one shard
    def texts(self, split: str) -> Iterator[str]:
        text = self.splits()[split]
        return (text[i : i + TEXT_PIECE_CHARS] for i in range(0, len(text), TEXT_PIECE_CHARS))

    def num_shards(self, split: str) -> int:
        return 1

    def tokenize_shard(self, tokenizer: Tokenizer, split: str, index: int) -> np.ndarray:
        return tokenizer.encode(self.splits()[split])
