"""Byte-level tokenizer: each UTF-8 byte is a token (vocab 256); needs nothing, encodes anything."""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
