"""Sources: where a corpus comes from, how it splits into train and val, and how prepare reads it.

`prepare` reads any `TokenSource`: a corpus in shards (one for an in-memory text, many for a
hub data set), each tokenized and written on its own, so a large corpus streams to disk and an
interrupted prepare continues from the last finished shard.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from nanugpt.errors import ConfigError, check_value
from nanugpt.tokenizers.base import Tokenizer

TEXT_PIECE_CHARS = 1 << 20
DECODE_CHUNK_BYTES = 1 << 24


def decoded_chunks(path: Path, encoding: str, fix: str) -> Iterator[str]:
    """The text of `path` in `encoding`, decoded strictly, a chunk at a time. Nothing is changed:
    line ends stay as the file has them, so the byte tokenizer sees a UTF-8 file's bytes exactly.

    Bytes that are not valid `encoding` raise a ConfigError naming the file, byte offset and
    line, and `fix`: never U+FFFD in their place, which would train every tokenizer on mangled
    text without a word (and the byte tokenizer on bytes the file does not hold).
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = lines = 0  # bytes read before this chunk; line ends decoded before it
    with open(path, "rb") as f:
        while True:
            chunk = f.read(DECODE_CHUNK_BYTES)
            # the decoder holds back an incomplete character from the end of the last chunk: an
            # error's object and position count from there
            state = decoder.getstate()
            held = len(state[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                before = codecs.getincrementaldecoder(encoding)(errors="replace")
                before.setstate(state)
                line = lines + before.decode(chunk[: max(err.start - held, 0)]).count("\n") + 1
                raise ConfigError(
                    f"{path} is not valid {encoding}: byte {err.object[err.start : err.end].hex(' ')} at offset "
                    f"{offset - held + err.start:,} (line {line}) {err.reason}. {fix}"
                ) from None
            except UnicodeError as err:  # a codec's own complaint, with no position (UTF-16 without its BOM)
                raise ConfigError(f"{path} is not valid {encoding}: {err}. {fix}") from None
            if not chunk:
                return
            offset += len(chunk)
            lines += text.count("\n")
            yield text


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
