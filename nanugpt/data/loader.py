"""Batches of random windows from a token-stream split held as one or more shards.

Every window of `context_length + 1` tokens that fits inside one shard gets a number, shard
after shard, so a split of many shard files is one range `0..num_windows-1` (a window never
crosses a shard boundary). Drawing a number uniformly draws a shard with probability
proportional to its windows, then an offset in it; with one shard it is the plain offset.

Each optimizer step draws the whole *global* batch's window numbers from one seeded generator,
identical on every rank, and each rank keeps its own slice. So 1 process and N processes see the
same global batch at every step, and the generator state is an exact resume position.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from nanugpt.data.contract import Batch, BatchSpec, TrainBatches
from nanugpt.errors import ConfigError

log = logging.getLogger(__name__)


class TokenWindows:
    """The numbered windows of one split's shards, gathered as (B, context_length + 1) rows.

    `vocab_size`, when given, is checked on every gathered row (cheap: a max over the batch), so
    a corrupt file or shards written with another vocab stop the run with the file's name instead
    of an index error deep in the embedding (a device-side assert on a GPU).
    """

    def __init__(
        self,
        shards: Sequence[np.ndarray],
        context_length: int,
        split: str = "train",
        vocab_size: int | None = None,
        repair_hint: str = "",
    ) -> None:
        self.shards, self.context_length, self.split = list(shards), context_length, split
        self.vocab_size, self.repair_hint = vocab_size, repair_hint
        # A shard of n tokens gives n - context_length - 1 window starts: the count the loader has
        # always drawn from, so a single shard draws exactly the windows it drew before shards.
        per_shard = np.array([max(0, len(s) - context_length - 1) for s in self.shards], dtype=np.int64)
        self.ends = np.cumsum(per_shard)
        self.starts = self.ends - per_shard
        self.num_windows = int(self.ends[-1]) if len(self.ends) else 0
        if self.num_windows == 0:
            longest = max((len(s) for s in self.shards), default=0)
            raise ConfigError(
                f"The {split} split has {sum(len(s) for s in self.shards):,} tokens"
                + (f" in {len(self.shards)} shards, the longest {longest:,}" if len(self.shards) > 1 else "")
                + f", fewer than one context window of {context_length} + 1: use more text, a smaller "
                "model.context_length, or a different data.val_fraction."
            )

    def locate(self, index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(shard, offset) of each window number."""
        index = index.numpy()
        shard = np.searchsorted(self.ends, index, side="right")
        return shard, index - self.starts[shard]

    def gather(self, index: torch.Tensor, pin: bool = False) -> torch.Tensor:
        """(B, context_length + 1) int64 rows of the windows numbered `index`, on the host (pinned
        for an asynchronous copy to a GPU when `pin`)."""
        span = self.context_length + 1
        shard, offset = self.locate(index)
        rows = np.stack([self.shards[s][o : o + span] for s, o in zip(shard.tolist(), offset.tolist(), strict=True)])
        rows = rows.astype(np.int64)
        if self.vocab_size is not None and rows.size and int(rows.max()) >= self.vocab_size:
            self._bad_token(rows, shard, offset)
        tensor = torch.from_numpy(rows)
        return tensor.pin_memory() if pin else tensor

    def _bad_token(self, rows: np.ndarray, shard: np.ndarray, offset: np.ndarray) -> None:
        row, col = np.argwhere(rows >= self.vocab_size)[0]
        source = self.shards[shard[row]]
        name = getattr(source, "filename", None) or f"shard {shard[row]} of the {self.split} split"
        raise ConfigError(
            f"{name} holds token id {int(rows[row, col])} (at token {int(offset[row] + col):,}), outside the vocab "
            f"of {self.vocab_size}. {self.repair_hint}".strip()
        )


def to_device(rows: torch.Tensor, device: torch.device) -> Batch:
    xy = rows.to(device, non_blocking=True)  # asynchronous from pinned memory
    return xy[:, :-1], xy[:, 1:]


class RandomWindowBatches:
    """The train batches of a token stream (`contract.TrainBatches`)."""

    def __init__(self, windows: TokenWindows, spec: BatchSpec, prefetch: bool | None = None) -> None:
        self.windows, self.spec = windows, spec
        self.pin = spec.device.type == "cuda"
        self.generator = torch.Generator().manual_seed(spec.seed)
        # On a GPU the next step's windows are gathered into pinned memory by a worker thread
        # while this step computes, so the GPU never waits on the host (default: on for CUDA).
        self.prefetch = spec.device.type == "cuda" if prefetch is None else prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nanugpt-prefetch") if self.prefetch else None
        self._pending: Future | None = None
        self._resume_state = self.generator.get_state()

    def _gather_next(self) -> list[torch.Tensor]:
        spec = self.spec
        index = torch.randint(self.windows.num_windows, (spec.global_batch_size,), generator=self.generator)
        mine = index.view(spec.grad_accum_steps, spec.world_size, spec.device_batch_size)[:, spec.rank]
        return [self.windows.gather(i, self.pin) for i in mine]

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches for one optimizer step."""
        if self._pool is None:
            host = self._gather_next()
            self._resume_state = None
        else:
            host = self._pending.result() if self._pending is not None else self._gather_next()
            # Resume position: after this step's draw, before the prefetched one's.
            self._resume_state = self.generator.get_state()
            self._pending = self._pool.submit(self._gather_next)
        return [to_device(rows, self.spec.device) for rows in host]

    def state_dict(self) -> dict[str, Any]:
        state = self._resume_state if self._resume_state is not None else self.generator.get_state()
        return {"generator": state, "num_windows": self.windows.num_windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._pending is not None:
            self._pending.result()  # let the worker finish with the generator before resetting it
            self._pending = None
        saved = state.get("num_windows")  # absent in checkpoints from before multi-shard data
        if saved is not None and saved != self.windows.num_windows:
            log.warning(
                "The train split has %s windows, the checkpoint's had %s: the data changed since it was saved, so "
                "the resumed batches differ from those of an uninterrupted run.",
                f"{self.windows.num_windows:,}",
                f"{saved:,}",
            )
        self.generator.set_state(state["generator"])
        self._resume_state = self.generator.get_state()


class RepeatedBatches:
    """debug=overfit (`training.overfit_batches=n`): any train batch source's first n steps, over
    and over. The cycle is drawn again from the seed on resume, so the state is the position in it."""

    def __init__(self, batches: TrainBatches, num_steps: int) -> None:
        self.cycle = [batches.next_step() for _ in range(num_steps)]
        self.position = 0

    def next_step(self) -> list[Batch]:
        step = self.cycle[self.position % len(self.cycle)]
        self.position += 1
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def fixed_eval_batches(windows: TokenWindows, spec: BatchSpec, num_batches: int, seed: int = 1234) -> list[Batch]:
    """The same `num_batches` eval batches of `device_batch_size` at every eval, whatever the world
    size; rank r takes every world_size-th one, and the caller sums loss over ranks."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(windows.num_windows, (num_batches, spec.device_batch_size), generator=generator)
    return [
        to_device(windows.gather(i, spec.device.type == "cuda"), spec.device)
        for i in index[spec.rank :: spec.world_size]
    ]
