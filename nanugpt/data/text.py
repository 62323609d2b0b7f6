"""Your own text: one file, or every file under a directory (sorted, joined by newlines)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from nanugpt.data.source import TextSource
from nanugpt.errors import MissingInputError, check_value

BLOCK_CHARS = 1 << 22


class TextFiles(TextSource):
    name = "text"

    def __init__(
        self, path: str, val_fraction: float, glob: str, shard_tokens: int | None, num_proc: int | None
    ) -> None:
        super().__init__(val_fraction, shard_tokens, num_proc)
        check_value("data.path", path, str, fix="Pass data.path=/path/to/file.txt or data.path=/path/to/dir.")
        check_value("data.glob", glob, str, fix="E.g. data.glob='**/*.txt' (files under data.path, when a directory).")
        self.path = Path(path).expanduser()
        self.glob = glob
        self.files()  # a missing path or an empty directory fails now, not once preparing starts

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            files = sorted(p for p in self.path.glob(self.glob) if p.is_file())
            if files:
                return files
            raise MissingInputError(
                f"data.path={self.path} is a directory with no files matching data.glob={self.glob!r}; "
                "point data.path at a text file or a directory that holds some."
            )
        raise MissingInputError(
            f"data.path={self.path} does not exist; pass data.path=/path/to/file.txt or a directory."
        )

    def read_text(self) -> str:
        return "".join(self.read_blocks())

    def read_blocks(self) -> Iterator[str]:
        """The files' text joined by newlines, streamed: a corpus larger than memory never is in it."""
        any_text = False
        for i, path in enumerate(self.files()):
            if i:
                yield "\n"
            with open(path, encoding="utf-8", errors="replace") as f:
                while block := f.read(BLOCK_CHARS):
                    any_text = any_text or not block.isspace()
                    yield block
        if not any_text:
            raise MissingInputError(f"data.path={self.path} holds no text; point it at a non-empty file.")
