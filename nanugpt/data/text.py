"""Your own text: one file, or every file under a directory (sorted, joined by newlines)."""

from __future__ import annotations

from pathlib import Path

from nanugpt.data.source import TextSource
from nanugpt.errors import ConfigError, MissingInputError


class TextFiles(TextSource):
    name = "text"

    def __init__(self, path: str | None, val_fraction: float = 0.1, glob: str = "**/*") -> None:
        super().__init__(val_fraction)
        if not path:
            raise ConfigError("data=text needs a path: pass data.path=/path/to/file.txt or data.path=/path/to/dir.")
        self.path = Path(path).expanduser()
        self.glob = glob

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
        text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in self.files())
        if not text.strip():
            raise MissingInputError(f"data.path={self.path} holds no text; point it at a non-empty file.")
        return text
