"""A text source: where a corpus comes from and how it splits into train and val."""

from __future__ import annotations

import hashlib
from functools import cached_property


class TextSource:
    """Base class for corpora that fit in memory as one string.

    Subclasses implement `read_text()`. The split is by position: the first
    `1 - val_fraction` of the text trains, the rest validates, so the split is fixed and needs
    no seed.
    """

    name = "text"

    def __init__(self, val_fraction: float = 0.1) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"data.val_fraction={val_fraction} must lie strictly between 0 and 1 "
                "(e.g. data.val_fraction=0.1 holds out the last 10% for validation)."
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
