"""The embedded default corpus: the running interpreter's own standard-library sources.

Every Python install has it, so `python -m nanugpt.train` needs no download. Files are sorted
so the corpus (and its train/val split) is the same on every run of the same Python.
"""

from __future__ import annotations

import sysconfig
import tokenize
from pathlib import Path

from nanugpt.data.source import TextSource, decoded_chunks
from nanugpt.errors import ConfigError, check_value

SKIPPED_DIRS = frozenset({"test", "site-packages", "__pycache__"})


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS.intersection(p.relative_to(root).parts))


def read_source(path: Path) -> str:
    """A Python file decoded as Python decodes it: UTF-8 unless a coding cookie names another.
    A UTF-8 BOM is kept as the character it is, as the corpus always held it."""
    fix = "This Python's standard library has a damaged file: train on other text (data=text data.path=...)."
    with open(path, "rb") as f:
        try:
            encoding = tokenize.detect_encoding(f.readline)[0]
        except SyntaxError as err:  # an unknown coding cookie, or bad UTF-8 in the first two lines
            raise ConfigError(f"{path}: {err.msg}. {fix}") from None
    return "".join(decoded_chunks(path, "utf-8" if encoding == "utf-8-sig" else encoding, fix))


class PyStdlibCorpus(TextSource):
    name = "pystdlib"

    def __init__(
        self, val_fraction: float, max_bytes: int | None, shard_tokens: int | None, num_proc: int | None
    ) -> None:
        super().__init__(val_fraction, shard_tokens, num_proc)
        check_value("data.max_bytes", max_bytes, int, ge=1, null="the whole corpus")
        self.max_bytes = max_bytes

    def read_text(self) -> str:
        parts: list[str] = []
        size = 0
        for path in stdlib_files():
            text = read_source(path)
            parts.append(text)
            size += len(text)
            if self.max_bytes is not None and size >= self.max_bytes:
                break
        text = "\n".join(parts)
        return text if self.max_bytes is None else text[: self.max_bytes]
