"""Batches for data sets of separate examples (one equation per row) instead of a token stream.

A data plugin that subclasses `ExampleSource` (grokking, arithmetic) encodes its examples with
the configured tokenizer; `example_data` turns them into the trainer's `contract.Data`: shuffled
epochs of the train rows (the same `TrainBatches` interface as the token-stream loader) and the
whole val (and test, where there is one) split as fixed eval batches.

Each row is `prompt + answer`; the model reads `row[:-1]` and the targets are `row[1:]` with
-100 (the losses' ignore index) over the prompt, so only the answer is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nanugpt.data.contract import Batch, BatchSpec, Data
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


class ExampleSource:
    """Base of the example data plugins: `examples()` gives each split's (inputs, targets)."""

    name: str

    def examples(self, tokenizer: Tokenizer) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """ "train" and "val" (and "test" where the data set has one) as (inputs, targets), (N, T) each."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """What identifies the examples, for the checkpoint's data_meta."""
        raise NotImplementedError


class ExampleBatches:
    """Shuffled epochs over the train rows (`contract.TrainBatches`).

    Every rank draws the same global batch from one seeded generator and keeps its slice, so 1
    and N processes see the same batches; the generator and the unused rest of the current
    epoch's order are the exact resume position.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, spec: BatchSpec) -> None:
        self.inputs, self.targets = inputs.to(spec.device), targets.to(spec.device)
        self.spec = spec
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.order = torch.empty(0, dtype=torch.long)  # rows of the current epoch not yet used

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches for one optimizer step."""
        spec = self.spec
        while len(self.order) < spec.global_batch_size:  # a batch larger than the split repeats rows
            self.order = torch.cat([self.order, torch.randperm(len(self.inputs), generator=self.generator)])
        rows, self.order = self.order[: spec.global_batch_size], self.order[spec.global_batch_size :]
        mine = rows.view(spec.grad_accum_steps, spec.world_size, spec.device_batch_size)[:, spec.rank]
        mine = mine.to(self.inputs.device)
        return [(self.inputs[i], self.targets[i]) for i in mine]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()


def eval_batches(inputs: torch.Tensor, targets: torch.Tensor, spec: BatchSpec) -> list[Batch]:
    """The whole split in chunks of `device_batch_size` rows; rank r takes every world_size-th chunk."""
    chunks = list(zip(inputs.split(spec.device_batch_size), targets.split(spec.device_batch_size), strict=False))
    return [(x.to(spec.device), y.to(spec.device)) for x, y in chunks[spec.rank :: spec.world_size]]


def example_data(source: ExampleSource, tokenizer: Tokenizer, spec: BatchSpec) -> Data:
    splits = source.examples(tokenizer)
    length = splits["train"][0].shape[1]
    if length > spec.context_length:
        raise ConfigError(
            f"data={source.name} rows are {length} tokens, longer than model.context_length={spec.context_length}; "
            f"pass model.context_length={length} (or more)."
        )
    meta = {
        "source": source.name,
        **source.meta(),
        "tokenizer": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "num_examples": {split: len(inputs) for split, (inputs, _) in splits.items()},
        "sequence_length": length,
    }
    return Data(
        ExampleBatches(*splits["train"], spec),
        eval_batches(*splits["val"], spec),
        eval_batches(*splits["test"], spec) if "test" in splits else None,
        int(tokenizer.vocab_size),
        meta,
    )
