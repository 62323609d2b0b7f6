"""Character-level tokenizer: one token per distinct character of the corpus (nanoGPT's
shakespeare_char). The vocab is built by `prepare` from the whole corpus and saved in the
prepared data's meta.json, and from there in every checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from nanugpt.errors import ConfigError, check_value


class CharTokenizer:
    name = "char"

    def __init__(self, chars: str | None) -> None:
        check_value("tokenizer.chars", chars, str, null="learned from the corpus by prepare")
        self.chars: str | None = None
        if chars is not None:
            self.load_state({"chars": chars})

    @property
    def needs_fit(self) -> bool:
        return self.chars is None

    @property
    def vocab_size(self) -> int:
        return len(self._vocab())

    def _vocab(self) -> str:
        if self.chars is None:
            raise RuntimeError(
                "The char tokenizer has no vocab yet: it is built from the corpus by prepare "
                "(python -m nanugpt.prepare tokenizer=char ...) and travels in meta.json and in "
                "checkpoints; pass a vocab explicitly with tokenizer.chars=... otherwise."
            )
        return self.chars

    def fit(self, texts: dict[str, Iterable[str]]) -> None:
        seen: set[str] = set()
        for pieces in texts.values():  # val too: a char seen only in val must still encode
            for piece in pieces:
                seen.update(piece)
        self.load_state({"chars": "".join(sorted(seen))})

    def state(self) -> dict[str, Any]:
        return {"chars": self._vocab()}

    def load_state(self, state: dict[str, Any]) -> None:
        chars = state["chars"]
        if len(set(chars)) != len(chars):
            raise ConfigError(
                f"The char tokenizer's vocab {chars[:50]!r} repeats a character; tokenizer.chars must list each once."
            )
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}
        self._lookup = np.array(list(chars) + ["\ufffd"], dtype=object)

    def encode(self, text: str) -> np.ndarray:
        vocab = self._ids if self.chars is not None else self._vocab()
        try:
            return np.fromiter((vocab[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            unknown = sorted(set(text) - set(self._vocab()))
            raise ValueError(
                f"Characters {''.join(unknown)[:50]!r} are not in the char vocab of {self.vocab_size} "
                "characters built from the training corpus; use only characters the corpus has "
                "(or tokenizer=byte, which encodes anything)."
            ) from None

    def decode(self, ids: list[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        ids = np.where((ids >= 0) & (ids < self.vocab_size), ids, self.vocab_size)  # unknown -> U+FFFD
        return "".join(self._lookup[ids].tolist())
