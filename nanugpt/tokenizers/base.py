"""What every tokenizer offers; byte, char, tiktoken and HF tokenizers all fit this shape."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray:
        """Text -> 1-D integer array of token ids."""
        ...

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Token ids -> text (invalid byte sequences become U+FFFD, never an exception)."""
        ...


def is_fitted_kind(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer learns its vocab from the corpus (char): `prepare` calls its
    `fit(texts)` once when `needs_fit` and stores `state()` in the prepared data's meta.json;
    every checkpoint copies that meta, so `generate` rebuilds it with `load_state(state)`."""
    # hasattr on the class: an unfitted instance's vocab_size raises, so no isinstance check
    return all(hasattr(type(tokenizer), a) for a in ("fit", "state", "load_state", "needs_fit"))


def tokenizer_state(tokenizer: Tokenizer) -> dict[str, Any] | None:
    return tokenizer.state() if is_fitted_kind(tokenizer) else None  # type: ignore[attr-defined]


def restore_tokenizer_state(tokenizer: Tokenizer, data_meta: dict[str, Any]) -> None:
    """Give a fitted tokenizer the vocab its prepared data (or checkpoint) was built with."""
    state = data_meta.get("tokenizer_state")
    if state is not None and is_fitted_kind(tokenizer):
        tokenizer.load_state(state)  # type: ignore[attr-defined]


def eot_id(tokenizer: Tokenizer) -> int | None:
    """The end-of-text token that separates documents, if the tokenizer has one."""
    return getattr(tokenizer, "eot_id", None)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65,536 tokens."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)
