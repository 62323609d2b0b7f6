"""What every tokenizer offers; byte, char, tiktoken and HF tokenizers all fit this shape."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65,536 tokens."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)
