"""Tokenizer for modular arithmetic: each number 0..p-1 is one token, then `+ - * /` and `=`,
then the data's operation when it is another one (`x**2+y**2`, ...; nanugpt/data/grokking.py).

Text is whitespace-separated symbols, e.g. "3 / 5 = 20", so an equation is always 5 tokens and
the answer is always the last one.
"""

from __future__ import annotations

import numpy as np

from nanugpt.errors import ConfigError, check_value

OPERATORS = ("+", "-", "*", "/")


class GrokkingTokenizer:
    # op defaults to None, not to the YAML's ${data.op}: a checkpoint saved before other operations
    # existed has no op in its tokenizer config and must still build.
    def __init__(self, p: int, op: str | None = None) -> None:
        check_value("tokenizer.p", p, int, ge=2, fix="The modulus; the grokking configs take ${data.p}.")
        self.p = p
        self.name = f"grokking{p}"
        # Another operation is one more token after "=", so the vocab and ids of + - * / data stay
        # as they were (op None: a checkpoint's tokenizer from before other operations existed).
        check_value("tokenizer.op", op, str, null="+ - * / only, as before other operations", fix="${data.op}")
        if op is not None and op.split() != [op]:
            raise ConfigError(f"tokenizer.op={op!r} must be one word, the data's operation (${{data.op}}).")
        self.op = op
        extra = [op] if op is not None and op not in OPERATORS else []
        self.symbols = [str(i) for i in range(p)] + list(OPERATORS) + ["="] + extra
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        self.vocab_size = len(self.symbols)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.array([self.ids[word] for word in text.split()], dtype=np.int64)
        except KeyError as e:
            raise ValueError(
                f"{e.args[0]!r} in {text!r} is not a token of the grokking tokenizer for p={self.p}: "
                f"it knows the numbers 0..{self.p - 1} and {' '.join(self.symbols[self.p :])}, separated by "
                "spaces. Set tokenizer.p and tokenizer.op to the data's (the grokking configs use ${data.p} and "
                "${data.op})."
            ) from None

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return " ".join(self.symbols[int(i)] if 0 <= int(i) < self.vocab_size else "\ufffd" for i in ids)
