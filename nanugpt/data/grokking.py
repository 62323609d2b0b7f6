"""Modular arithmetic for grokking (Power et al. 2022): every equation `a ∘ b = c (mod p)`.

`∘` is one of `+ - * /`; division is multiplication by the modular inverse, so it needs a prime
p and b ≠ 0. The table is split at random (seeded by `seed`, fixed across training seeds) into
`train_fraction` for training and the rest for validation. Rows are `a ∘ b = c` as 5 tokens; the
loss scores only `c`.
"""

from __future__ import annotations

from typing import Any

import torch

from nanugpt.data.examples import ExampleSource, encode_examples, split_indices
from nanugpt.errors import ConfigError, check_value
from nanugpt.tokenizers.base import Tokenizer
from nanugpt.tokenizers.grokking import OPERATORS


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def modular_table(p: int, op: str) -> list[tuple[int, int, int]]:
    """Every (a, b, a ∘ b mod p), in order of (a, b)."""
    if op == "/":
        return [(a, b, a * pow(b, -1, p) % p) for a in range(p) for b in range(1, p)]
    apply = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}[op]
    return [(a, b, apply(a, b) % p) for a in range(p) for b in range(p)]


class ModularArithmetic(ExampleSource):
    name = "grokking"

    def __init__(self, p: int, op: str, train_fraction: float, seed: int) -> None:
        check_value("data.op", op, str, choices=OPERATORS, fix="E.g. data.op=/ (quote it in a shell: 'data.op=*').")
        check_value("data.p", p, int, ge=2, fix="The modulus, e.g. data.p=97.")
        if op == "/" and not is_prime(p):
            raise ConfigError(
                f"data.p={p} must be a prime for division (b must have an inverse mod p), e.g. 97 or 223."
            )
        check_value("data.train_fraction", train_fraction, float, gt=0, lt=1, fix="E.g. data.train_fraction=0.5.")
        check_value("data.seed", seed, int, ge=0)
        self.p, self.op, self.train_fraction, self.seed = p, op, train_fraction, seed

    def equations(self) -> tuple[list[str], list[str]]:
        """Prompts "a ∘ b =" and answers "c" for the whole table."""
        table = modular_table(self.p, self.op)
        return [f"{a} {self.op} {b} =" for a, b, _ in table], [str(c) for _, _, c in table]

    def examples(self, tokenizer: Tokenizer) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Train and val (inputs, targets) after the seeded split."""
        if getattr(tokenizer, "p", self.p) != self.p:
            raise ConfigError(
                f"tokenizer.p={tokenizer.p} differs from data.p={self.p}; drop the override (the grokking tokenizer "
                f"takes ${{data.p}})."
            )
        inputs, targets = encode_examples(tokenizer, *self.equations())
        train, val = split_indices(len(inputs), self.train_fraction, self.seed)
        return {"train": (inputs[train], targets[train]), "val": (inputs[val], targets[val])}

    def meta(self) -> dict[str, Any]:
        return {"p": self.p, "op": self.op, "train_fraction": self.train_fraction, "split_seed": self.seed}
