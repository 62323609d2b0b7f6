"""The data contract between the data plugins and the trainer (and `nanugpt.bench`).

`nanugpt.data.build.build_data(cfg, spec)` turns any `data=` option into a `Data`: a train
batch source that hands out one optimizer step's micro-batches at a time and saves its position
in checkpoints, fixed val (and, where the data set has one, test) batches, the vocab size and
metadata for the checkpoint. `BatchSpec` says how a global batch is cut up across ranks and
micro-steps; it is the one place that computes gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig

from nanugpt.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (batch, time)


@dataclass(frozen=True)
class BatchSpec:
    """One optimizer step's batch: `global_batch_size` sequences, summed over `world_size`
    ranks and `grad_accum_steps` micro-steps of `device_batch_size` each. Every rank draws the
    same global batch from `seed` and keeps its own slice, so 1 and N ranks train alike."""

    context_length: int
    global_batch_size: int
    device_batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        # An indivisible global batch is an error here, before any work starts.
        _ = self.grad_accum_steps

    @property
    def grad_accum_steps(self) -> int:
        if self.global_batch_size < 1 or self.device_batch_size < 1:
            raise ConfigError(
                f"training.global_batch_size={self.global_batch_size} and training.device_batch_size="
                f"{self.device_batch_size} must both be at least 1."
            )
        per_step = self.device_batch_size * self.world_size
        if self.global_batch_size % per_step != 0:
            raise ConfigError(
                f"training.global_batch_size={self.global_batch_size} is not divisible by "
                f"training.device_batch_size={self.device_batch_size} x world_size={self.world_size} = {per_step}. "
                f"Pick a global batch that is a multiple of {per_step} (e.g. "
                f"{max(per_step, self.global_batch_size // per_step * per_step)}), "
                "or change device_batch_size."
            )
        return self.global_batch_size // per_step

    @classmethod
    def from_config(
        cls, cfg: DictConfig, rank: int = 0, world_size: int = 1, device: torch.device | None = None
    ) -> BatchSpec:
        t = cfg.training
        return cls(
            cfg.model.context_length,
            t.global_batch_size,
            t.device_batch_size,
            rank,
            world_size,
            t.seed,
            device or torch.device("cpu"),
        )


class TrainBatches(Protocol):
    """Where training batches come from: an exact, checkpointable position in a seeded stream."""

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches (`grad_accum_steps` of them) for one optimizer step."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Data:
    train: TrainBatches
    val: list[Batch]  # the same batches at every eval; this rank's share
    test: list[Batch] | None  # None: the data set has no test split (or eval.test_iters=0)
    vocab_size: int
    meta: dict[str, Any]  # saved in checkpoints as data_meta (a fitted tokenizer's state, counts)


@dataclass
class TokenSplits:
    """A token-stream corpus: each split a list of 1-D token arrays (shards, memory-mapped).

    What the prepared-text cache and pre-tokenized shard files both load as. A window of the
    loader never crosses a shard boundary, so a split can be many files (llm.c, modded-nanogpt,
    the prepared cache's `train_000000.bin`, ...) or one (nanoGPT's `train.bin`).
    """

    splits: dict[str, list[np.ndarray]]  # "train", "val", and "test" where the data has one
    vocab_size: int
    meta: dict[str, Any]
    path: Path | None = None
    repair_hint: str = ""  # what to do when a token id turns out to lie outside the vocab
