"""Multi-digit addition and multiplication as strings, scored on the answer only.

Each row is `"123+045=" + answer`: operands zero-padded to `n_digits`, the answer zero-padded to
its widest (n_digits + 1 for +, 2 * n_digits for *) and, by default, written least significant
digit first, which lets a causal model emit the carry in the order it computes it. Pairs are
drawn without repetition from a seeded generator and split into train and val, so no val
question is ever trained on. Any tokenizer with one token per character works (tokenizer=byte).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nanugpt.data.examples import ExampleSource, encode_examples, split_indices
from nanugpt.errors import check_value
from nanugpt.tokenizers.base import Tokenizer

ANSWER_DIGITS = {"+": lambda n: n + 1, "*": lambda n: 2 * n}


class ArithmeticStrings(ExampleSource):
    name = "arithmetic"

    def __init__(
        self,
        op: str,
        n_digits: int,
        num_examples: int,
        train_fraction: float,
        reverse_answer: bool,
        seed: int,
    ) -> None:
        check_value("data.op", op, str, choices=tuple(ANSWER_DIGITS), fix="E.g. data.op=+ (quote * in a shell).")
        check_value("data.n_digits", n_digits, int, ge=1, le=9)
        check_value(
            "data.num_examples",
            num_examples,
            int,
            ge=2,
            le=10 ** (2 * n_digits),
            fix=f"There are {10 ** (2 * n_digits):,} distinct pairs of {n_digits}-digit numbers; lower it or raise "
            "data.n_digits.",
        )
        check_value("data.train_fraction", train_fraction, float, gt=0, lt=1, fix="E.g. data.train_fraction=0.9.")
        check_value("data.reverse_answer", reverse_answer, bool)
        check_value("data.seed", seed, int, ge=0)
        self.op, self.n_digits, self.num_examples = op, n_digits, num_examples
        self.train_fraction, self.reverse_answer, self.seed = train_fraction, reverse_answer, seed

    def pairs(self) -> np.ndarray:
        """`num_examples` distinct (a, b) pairs, (N, 2), the same for the same seed."""
        rng = np.random.default_rng(self.seed)
        space = 10 ** (2 * self.n_digits)
        codes = rng.choice(space, self.num_examples, replace=False) if space <= 10**7 else np.empty(0, dtype=np.int64)
        while len(codes) < self.num_examples:  # huge spaces: draw with repetition, drop repeats
            codes = np.unique(np.concatenate([codes, rng.integers(0, space, self.num_examples)]))[: self.num_examples]
        codes = rng.permutation(codes)
        return np.stack([codes // 10**self.n_digits, codes % 10**self.n_digits], axis=1)

    def equations(self) -> tuple[list[str], list[str]]:
        n, width = self.n_digits, ANSWER_DIGITS[self.op](self.n_digits)
        prompts, answers = [], []
        for a, b in self.pairs().tolist():
            c = f"{a + b if self.op == '+' else a * b:0{width}d}"
            prompts.append(f"{a:0{n}d}{self.op}{b:0{n}d}=")
            answers.append(c[::-1] if self.reverse_answer else c)
        return prompts, answers

    def examples(self, tokenizer: Tokenizer) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = encode_examples(tokenizer, *self.equations())
        train, val = split_indices(len(inputs), self.train_fraction, self.seed)
        return {"train": (inputs[train], targets[train]), "val": (inputs[val], targets[val])}

    def meta(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "n_digits": self.n_digits,
            "reverse_answer": self.reverse_answer,
            "split_seed": self.seed,
        }
