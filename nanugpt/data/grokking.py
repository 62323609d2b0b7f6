"""Modular arithmetic for grokking (Power et al. 2022): every equation `a ∘ b = c (mod p)`.

`∘` is one of `+ - * /` or one of Power et al.'s other binary operations (their Appendix A.1,
openai/grok `grok/data.py`), named as Python writes them with x = a and y = b, so that Hydra takes
the name unquoted (`data.op=x**2+y**2`): the polynomials `x**2+y**2`, `x**2+x*y+y**2`,
`x**2+x*y+y**2+x`, `x**3+x*y`, `x**3+x*y**2+y`, and the conditional `x/y_if_y_odd_else_x-y`. Also
`x**3+x*y**2+x`: the reference system (sytelus/nanuGPT `nanugpt/tokenizers/grokking_tokenizer.py`)
has an operation of that name, whose code computes x**3+x*y**2+y instead; here each computes what
its name says. The reference's conditional, `(x//y)if(y%2==1)else(x-y)`, divides with integer
floor division rather than modulo p, and its function returns one tensor where its data code
unpacks three, so it cannot run there; here it is the paper's x / y (mod p) for odd y.

Division is multiplication by the modular inverse, so `/` and the conditional need a prime p; `/`
leaves out b = 0, the others take every pair 0 <= a, b < p. The table is split at random (seeded
by `seed`, fixed across training seeds) into `train_fraction` for training and the rest for
validation. Rows are `a ∘ b = c` as 5 tokens; the loss scores only `c`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nanugpt.data.examples import ExampleSource, encode_examples, split_indices
from nanugpt.errors import ConfigError, check_value
from nanugpt.tokenizers.base import Tokenizer


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


# name -> a ∘ b before the final mod p
OPERATIONS: dict[str, Callable[[int, int, int], int]] = {
    "+": lambda x, y, p: x + y,
    "-": lambda x, y, p: x - y,
    "*": lambda x, y, p: x * y,
    "/": lambda x, y, p: x * pow(y, -1, p),
    "x**2+y**2": lambda x, y, p: x**2 + y**2,
    "x**2+x*y+y**2": lambda x, y, p: x**2 + x * y + y**2,
    "x**2+x*y+y**2+x": lambda x, y, p: x**2 + x * y + y**2 + x,
    "x**3+x*y": lambda x, y, p: x**3 + x * y,
    "x**3+x*y**2+x": lambda x, y, p: x**3 + x * y**2 + x,
    "x**3+x*y**2+y": lambda x, y, p: x**3 + x * y**2 + y,
    "x/y_if_y_odd_else_x-y": lambda x, y, p: x * pow(y, -1, p) if y % 2 else x - y,
}
DIVIDES = ("/", "x/y_if_y_odd_else_x-y")  # need the inverse of b mod p: a prime p


def modular_table(p: int, op: str) -> list[tuple[int, int, int]]:
    """Every (a, b, a ∘ b mod p), in order of (a, b)."""
    apply = OPERATIONS[op]
    return [(a, b, apply(a, b, p) % p) for a in range(p) for b in range(1 if op == "/" else 0, p)]


class ModularArithmetic(ExampleSource):
    name = "grokking"

    def __init__(self, p: int, op: str, train_fraction: float, seed: int) -> None:
        check_value(
            "data.op",
            op,
            str,
            choices=tuple(OPERATIONS),
            fix="E.g. data.op=/ (quote it in a shell: 'data.op=x**2+y**2').",
        )
        check_value("data.p", p, int, ge=2, fix="The modulus, e.g. data.p=97.")
        if op in DIVIDES and not is_prime(p):
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
        if self.op not in getattr(tokenizer, "ids", {self.op: 0}):
            raise ValueError(
                f"The tokenizer has no token for data.op={self.op!r}; drop the tokenizer.op override (the grokking "
                "tokenizer takes ${data.op})."
            )
        inputs, targets = encode_examples(tokenizer, *self.equations())
        train, val = split_indices(len(inputs), self.train_fraction, self.seed)
        return {"train": (inputs[train], targets[train]), "val": (inputs[val], targets[val])}

    def meta(self) -> dict[str, Any]:
        return {"p": self.p, "op": self.op, "train_fraction": self.train_fraction, "split_seed": self.seed}
