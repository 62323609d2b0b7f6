"""Sources: where a corpus comes from, how it splits into train and val, and how prepare reads it.

`prepare` reads any `TokenSource` as a stream of pieces per split (text of about a megabyte, or a
batch of documents), tokenizes them on `num_proc` processes with a bounded number in flight, and
writes the tokens as shards of `shard_tokens` each: memory is bounded by the pieces in flight,
whatever the corpus size.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

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


DEFAULT_SHARD_TOKENS = 100_000_000  # llm.c's fineweb shards: 200 MB of uint16 each


def check_prepare_options(shard_tokens: int | None, num_proc: int | None) -> tuple[int, int]:
    """`data.shard_tokens` and `data.num_proc` with their defaults filled in (null: 100M tokens per
    shard; all cores but one)."""
    check_value(
        "data.shard_tokens",
        shard_tokens,
        int,
        ge=1,
        le=2**31 - 1,  # the llm.c header's int32 count
        null=f"{DEFAULT_SHARD_TOKENS:,} tokens per shard",
        fix="Tokens per prepared shard file, at most 2**31 - 1 (the llm.c header's count), e.g. "
        "data.shard_tokens=100000000.",
    )
    check_value("data.num_proc", num_proc, int, ge=1, null="all cores but one")
    return shard_tokens or DEFAULT_SHARD_TOKENS, num_proc or max(1, (os.cpu_count() or 2) - 1)


class TokenSource(Protocol):
    name: str
    split_names: tuple[str, ...]  # ("train", "val"), plus "test" where the corpus has one
    shard_tokens: int  # tokens per prepared shard file
    num_proc: int  # tokenizer processes

    def fingerprint(self) -> str:
        """Identifies the content, so a changed corpus is never served from a stale cache."""
        ...

    def texts(self, split: str) -> Iterator[str]:
        """The split's text in pieces, for tokenizers learned from the corpus (char, BPE)."""
        ...

    def pieces(self, split: str) -> Iterator[Any]:
        """The split as picklable pieces of work, in order, read lazily (same pieces on every run)."""
        ...

    def encode_piece(self, tokenizer: Tokenizer, piece: Any) -> np.ndarray:
        """Token ids of one piece; a split's pieces concatenate in order."""
        ...


def safe_cut(text: str, start: int) -> int:
    """The end of a piece: just after the first newline at or after `start` that sits between two
    non-spaces (where the gpt2, cl100k and o200k pre-tokenizers never join across, see
    `tiktoken_bpe.split_for_batch`), or -1 if `text` has none."""
    end = start
    while 0 <= (end := text.find("\n", end)) and end + 1 < len(text):
        if not (text[end + 1].isspace() or text[end - 1].isspace()):
            return end + 1
        end += 1
    return -1


class TextSource:
    """Base class for text corpora: one stream of characters, split by position.

    Subclasses implement `read_text()` (a corpus that fits in memory) or `read_blocks()` (a
    stream, read twice: once to fingerprint and count, once to tokenize). The first
    `1 - val_fraction` of the characters trains, the rest validates, so the split is fixed and
    needs no seed.
    """

    name = "text"
    split_names = ("train", "val")

    def __init__(self, val_fraction: float, shard_tokens: int | None = None, num_proc: int | None = None) -> None:
        check_value(
            "data.val_fraction",
            val_fraction,
            float,
            gt=0,
            lt=1,
            fix="E.g. data.val_fraction=0.1 holds out the last 10% for validation.",
        )
        self.val_fraction = val_fraction
        self.shard_tokens, self.num_proc = check_prepare_options(shard_tokens, num_proc)

    def read_text(self) -> str:
        raise NotImplementedError

    @cached_property
    def text(self) -> str:
        return self.read_text()

    def read_blocks(self) -> Iterator[str]:
        """The corpus's characters in blocks of any size."""
        yield self.text

    @cached_property
    def _scan(self) -> tuple[str, int]:
        """(sha256 of the UTF-8 text, number of characters), in one streaming pass."""
        digest, chars = hashlib.sha256(), 0
        for block in self.read_blocks():
            digest.update(block.encode("utf-8"))
            chars += len(block)
        return digest.hexdigest(), chars

    def fingerprint(self) -> str:
        """Identifies the source's content, so changed files are never served from a stale cache."""
        return self._scan[0]

    def _split_blocks(self, split: str) -> Iterator[str]:
        total = self._scan[1]
        cut = int(total * (1.0 - self.val_fraction))
        lo, hi = (0, cut) if split == "train" else (cut, total)
        pos = 0
        for block in self.read_blocks():
            start, end = max(lo, pos), min(hi, pos + len(block))
            if start < end:
                yield block[start - pos : end - pos]
            pos += len(block)

    def pieces(self, split: str) -> Iterator[str]:
        """About TEXT_PIECE_CHARS each, cut only where a cut leaves the tokens unchanged."""
        buffer = ""
        for block in self._split_blocks(split):
            buffer += block
            while len(buffer) > TEXT_PIECE_CHARS and (end := safe_cut(buffer, TEXT_PIECE_CHARS)) > 0:
                yield buffer[:end]
                buffer = buffer[end:]
        if buffer:
            yield buffer

    def texts(self, split: str) -> Iterator[str]:
        return self.pieces(split)

    def encode_piece(self, tokenizer: Tokenizer, piece: str) -> np.ndarray:
        return tokenizer.encode(piece)
