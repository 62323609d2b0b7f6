"""Batches of random windows from a flat token array.

Each optimizer step draws the whole *global* batch's window offsets from one seeded generator,
identical on every rank, and each rank keeps its own slice. So 1 process and N processes see the
same global batch at every step, and the generator state is an exact resume position.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from nanugpt.errors import ConfigError


def gather_windows(tokens: np.ndarray, offsets: torch.Tensor, context_length: int, pin: bool) -> torch.Tensor:
    """(B, context_length + 1) int64 rows of `tokens` starting at `offsets`, on the host (pinned
    for an asynchronous copy to a GPU when `pin`)."""
    rows = torch.from_numpy(np.stack([tokens[i : i + context_length + 1] for i in offsets.tolist()]).astype(np.int64))
    return rows.pin_memory() if pin else rows


def to_device(rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    xy = rows.to(device, non_blocking=True)  # asynchronous from pinned memory
    return xy[:, :-1], xy[:, 1:]


def windows_to_batch(
    tokens: np.ndarray, offsets: torch.Tensor, context_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return to_device(gather_windows(tokens, offsets, context_length, device.type == "cuda"), device)


def check_enough_tokens(tokens: np.ndarray, context_length: int, split: str) -> None:
    if len(tokens) < context_length + 2:
        raise ConfigError(
            f"The {split} split has {len(tokens):,} tokens, fewer than one context window of "
            f"{context_length} + 1: use more text, a smaller model.context_length, or a different "
            "data.val_fraction."
        )


class RandomWindowBatches:
    def __init__(
        self,
        tokens: np.ndarray,
        context_length: int,
        global_batch_size: int,
        device_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device,
        prefetch: bool | None = None,
    ) -> None:
        check_enough_tokens(tokens, context_length, "train")
        self.tokens = tokens
        self.context_length = context_length
        self.device_batch_size = device_batch_size
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.grad_accum_steps = global_batch_size // (device_batch_size * world_size)
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        # On a GPU the next step's windows are gathered into pinned memory by a worker thread
        # while this step computes, so the GPU never waits on the host (default: on for CUDA).
        self.prefetch = device.type == "cuda" if prefetch is None else prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nanugpt-prefetch") if self.prefetch else None
        self._pending: Future | None = None
        self._resume_state = self.generator.get_state()

    def _gather_next(self) -> list[torch.Tensor]:
        offsets = torch.randint(
            len(self.tokens) - self.context_length - 1, (self.global_batch_size,), generator=self.generator
        )
        mine = offsets.view(self.grad_accum_steps, self.world_size, self.device_batch_size)[:, self.rank]
        return [gather_windows(self.tokens, o, self.context_length, self.device.type == "cuda") for o in mine]

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step."""
        if self._pool is None:
            host = self._gather_next()
            self._resume_state = None
        else:
            host = self._pending.result() if self._pending is not None else self._gather_next()
            # Resume position: after this step's draw, before the prefetched one's.
            self._resume_state = self.generator.get_state()
            self._pending = self._pool.submit(self._gather_next)
        return [to_device(rows, self.device) for rows in host]

    def state_dict(self) -> dict[str, Any]:
        state = self._resume_state if self._resume_state is not None else self.generator.get_state()
        return {"generator": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._pending is not None:
            self._pending.result()  # let the worker finish with the generator before resetting it
            self._pending = None
        self.generator.set_state(state["generator"])
        self._resume_state = self.generator.get_state()


class RepeatedBatches:
    """debug=overfit (`training.overfit_batches=n`): the first n steps' batches over and over.

    The cache is rebuilt from the seed on resume, so the state is just the position in the cycle.
    """

    def __init__(self, batches: Any, num_steps: int) -> None:
        self.cycle = [batches.next_step() for _ in range(num_steps)]
        self.position = 0

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        step = self.cycle[self.position % len(self.cycle)]
        self.position += 1
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def fixed_eval_batches(
    tokens: np.ndarray,
    context_length: int,
    batch_size: int,
    num_batches: int,
    rank: int,
    world_size: int,
    device: torch.device,
    seed: int = 1234,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `num_batches` val batches at every eval, whatever the world size; rank r takes
    every world_size-th one, and the caller sums loss over ranks."""
    check_enough_tokens(tokens, context_length, "val")
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(len(tokens) - context_length - 1, (num_batches, batch_size), generator=generator)
    return [windows_to_batch(tokens, o, context_length, device) for o in offsets[rank::world_size]]
