"""Your own text: one file, or every text file under a directory (sorted, joined by newlines).

Files are decoded strictly in `data.encoding` (UTF-8 unless told), and nothing else is changed
(line ends neither): a file that is not in it is refused with its name and the offset of the first
bad byte, for every tokenizer. The byte tokenizer sees a UTF-8 file's bytes exactly, and a file in
another encoding as the UTF-8 bytes of its text, which is what `generate` prints.

Under a directory, hidden files and directories (`.git/`, `.venv/`), `__pycache__/` and binary
files (a NUL character in the first KB, as git and grep judge) are skipped, and the log counts them.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator
from pathlib import Path

from nanugpt.data.source import TextSource, decoded_chunks
from nanugpt.errors import ConfigError, MissingInputError, check_value

log = logging.getLogger(__name__)

BINARY_PROBE_BYTES = 1024
SKIPPED_DIR_NAMES = frozenset({"__pycache__"})


def check_encoding(key: str, encoding: str) -> None:
    check_value(key, encoding, str, fix="E.g. utf-8, latin-1, cp1252 or utf-16.")
    try:
        b"\0\0\0\0".decode(encoding, errors="replace")  # b"" would pass any name
    except (LookupError, UnicodeError):  # unknown, a bytes-to-bytes codec (base64), or one that cannot decode
        raise ConfigError(
            f"{key}={encoding} is not a text encoding Python knows; pass the one your files are in, "
            "e.g. utf-8, latin-1, cp1252 or utf-16."
        ) from None


def looks_binary(path: Path, encoding: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(BINARY_PROBE_BYTES)
    # decoded first: UTF-16 text has a NUL byte in every ASCII character, but no NUL character
    try:
        return "\0" in codecs.getincrementaldecoder(encoding)(errors="replace").decode(head)
    except UnicodeError:  # not even the start decodes (UTF-16 without its BOM): reading it says so
        return False


class TextFiles(TextSource):
    name = "text"

    def __init__(
        self,
        path: str,
        val_fraction: float,
        glob: str,
        encoding: str,
        shard_tokens: int | None,
        num_proc: int | None,
    ) -> None:
        super().__init__(val_fraction, shard_tokens, num_proc)
        check_value("data.path", path, str, fix="Pass data.path=/path/to/file.txt or data.path=/path/to/dir.")
        check_value("data.glob", glob, str, fix="E.g. data.glob='**/*.txt' (files under data.path, when a directory).")
        check_encoding("data.encoding", encoding)
        self.path = Path(path).expanduser()
        self.glob = glob
        self.encoding = encoding
        self.paths = self.files()  # a missing path or an empty directory fails now, not once preparing starts

    def files(self) -> list[Path]:
        if self.path.is_file():
            if looks_binary(self.path, self.encoding):
                raise ConfigError(
                    f"data.path={self.path} looks binary: it has a NUL character in its first "
                    f"{BINARY_PROBE_BYTES} bytes, read as data.encoding={self.encoding}. Point data.path at a text "
                    "file; if it is text in another encoding (UTF-16 has NUL bytes), name it with data.encoding=..."
                )
            return [self.path]
        if not self.path.is_dir():
            raise MissingInputError(
                f"data.path={self.path} does not exist; pass data.path=/path/to/file.txt or a directory."
            )
        files, hidden, binary = [], 0, 0
        for p in sorted(self.path.glob(self.glob)):
            if not p.is_file():
                continue
            parts = p.relative_to(self.path).parts
            if any(part.startswith(".") or part in SKIPPED_DIR_NAMES for part in parts):
                hidden += 1
            elif looks_binary(p, self.encoding):
                binary += 1
            else:
                files.append(p)
        skipped = (
            f"skipped {hidden} hidden (a .name, or under a .dir/ or __pycache__/) and {binary} binary "
            f"(a NUL character in the first {BINARY_PROBE_BYTES} bytes)"
        )
        if not files:
            raise MissingInputError(
                f"data.path={self.path} is a directory with no text files matching data.glob={self.glob!r} "
                f"({skipped}); point data.path at a text file or a directory that holds some."
            )
        if hidden or binary:
            log.info("data.path=%s: %d text files; %s", self.path, len(files), skipped)
        return files

    def read_text(self) -> str:
        return "".join(self.read_blocks())

    def read_blocks(self) -> Iterator[str]:
        """The files' text joined by newlines, decoded strictly and streamed: a corpus larger than
        memory never is in it."""
        fix = (
            "Name the encoding it is in with data.encoding=... (latin-1, cp1252, utf-16, ...), or convert it "
            "(e.g. iconv -f latin1 -t utf-8 in.txt > out.txt, for data.encoding=utf-8)"
            + (", or leave it out with data.glob=..." if len(self.paths) > 1 else "")
            + "."
        )
        any_text = False
        for i, path in enumerate(self.paths):
            if i:
                yield "\n"
            for block in decoded_chunks(path, self.encoding, fix):
                any_text = any_text or not block.isspace()
                yield block
        if not any_text:
            raise MissingInputError(f"data.path={self.path} holds no text; point it at a non-empty file.")
