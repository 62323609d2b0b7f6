"""Batches for data sets of separate examples (one equation per row) instead of a token stream.

A data plugin that has a `batches(...)` method (grokking, arithmetic) gets its batches from it
instead of from the prepared-text path; `nanugpt/train.py` checks for the method. It returns an
`ExampleData`: the train batch builder (same interface as `loader.RandomWindowBatches`), the
whole val split as fixed eval batches, the vocab size and metadata for the checkpoint.

Each row is `prompt + answer`; the model reads `row[:-1]` and the targets are `row[1:]` with
-100 (the losses' ignore index) over the prompt, so only the answer is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nanugpt.errors import ConfigError
from nanugpt.tokenizers.base import Tokenizer

IGNORE_INDEX = -100


def encode_examples(
    tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (N, T): targets are -100 except at the answer's tokens."""
    rows, masks = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        p, a = tokenizer.encode(prompt).tolist(), tokenizer.encode(answer).tolist()
        rows.append(p + a)
        masks.append([False] * len(p) + [True] * len(a))
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ConfigError(
            f"Examples encode to different lengths {sorted(lengths)} with the {tokenizer.name} tokenizer, "
            f"e.g. {prompts[0]!r} + {answers[0]!r}; example data needs one fixed length per row: use "
            "the tokenizer its config names (tokenizer=grokking for data=grokking)."
        )
    tokens, scored = torch.tensor(rows), torch.tensor(masks)
    targets = torch.where(scored[:, 1:], tokens[:, 1:], IGNORE_INDEX)
    return tokens[:, :-1].contiguous(), targets.contiguous()


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of `range(n)`: the same seed gives the same split on every machine."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(n * train_fraction)
    if not 0 < n_train < n:
        raise ConfigError(
            f"data.train_fraction={train_fraction} of {n} examples leaves an empty split; raise or lower it."
        )
    return order[:n_train].sort().values, order[n_train:].sort().values


class ExampleBatches:
    """Shuffled epochs over the train rows, same interface as `RandomWindowBatches`.

    Every rank draws the same global batch from one seeded generator and keeps its slice, so 1
    and N processes see the same batches; the generator and the unused rest of the current
    epoch's order are the exact resume position.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        global_batch_size: int,
        device_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.inputs, self.targets = inputs.to(device), targets.to(device)
        self.global_batch_size, self.device_batch_size = global_batch_size, device_batch_size
        self.rank, self.world_size = rank, world_size
        self.grad_accum_steps = global_batch_size // (device_batch_size * world_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)  # rows of the current epoch not yet used

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step."""
        while len(self.order) < self.global_batch_size:  # a batch larger than the split repeats rows
            self.order = torch.cat([self.order, torch.randperm(len(self.inputs), generator=self.generator)])
        rows, self.order = self.order[: self.global_batch_size], self.order[self.global_batch_size :]
        mine = rows.view(self.grad_accum_steps, self.world_size, self.device_batch_size)[:, self.rank]
        mine = mine.to(self.inputs.device)
        return [(self.inputs[i], self.targets[i]) for i in mine]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()


def eval_batches(
    inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, rank: int, world_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole split in chunks of `batch_size` rows; rank r takes every world_size-th chunk."""
    chunks = list(zip(inputs.split(batch_size), targets.split(batch_size), strict=False))
    return [(x.to(device), y.to(device)) for x, y in chunks[rank::world_size]]


@dataclass
class ExampleData:
    train_batches: ExampleBatches
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    vocab_size: int
    meta: dict[str, Any]


def build_example_data(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    tokenizer: Tokenizer,
    meta: dict[str, Any],
    global_batch_size: int,
    device_batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    device: torch.device,
) -> ExampleData:
    meta = {
        **meta,
        "tokenizer": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "num_examples": {"train": len(train[0]), "val": len(val[0])},
        "sequence_length": train[0].shape[1],
    }
    return ExampleData(
        ExampleBatches(*train, global_batch_size, device_batch_size, rank, world_size, seed, device),
        eval_batches(*val, device_batch_size, rank, world_size, device),
        int(tokenizer.vocab_size),
        meta,
    )
