"""Tokenizer for modular arithmetic: each number 0..p-1 is one token, then `+ - * /` and `=`.

Text is whitespace-separated symbols, e.g. "3 / 5 = 20", so an equation is always 5 tokens and
the answer is always the last one.
"""

from __future__ import annotations

import numpy as np

from nanugpt.errors import check_value

OPERATORS = ("+", "-", "*", "/")


class GrokkingTokenizer:
    def __init__(self, p: int) -> None:
        check_value("tokenizer.p", p, int, ge=2, fix="The modulus; the grokking configs take ${data.p}.")
        self.p = p
        self.name = f"grokking{p}"
        self.symbols = [str(i) for i in range(p)] + list(OPERATORS) + ["="]
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        self.vocab_size = len(self.symbols)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.array([self.ids[word] for word in text.split()], dtype=np.int64)
        except KeyError as e:
            raise ValueError(
                f"{e.args[0]!r} in {text!r} is not a token of the grokking tokenizer for p={self.p}: "
                f"it knows the numbers 0..{self.p - 1}, {' '.join(OPERATORS)} and '=', separated by "
                "spaces. Set tokenizer.p to the data's modulus (the grokking configs use ${data.p})."
            ) from None

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return " ".join(self.symbols[int(i)] if 0 <= int(i) < self.vocab_size else "\ufffd" for i in ids)
