"""Batches of random windows from a flat token array.

Each optimizer step draws the whole *global* batch's window offsets from one seeded generator,
identical on every rank, and each rank keeps its own slice. So 1 process and N processes see the
same global batch at every step, and the generator state is an exact resume position.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nanugpt.errors import ConfigError


def windows_to_batch(tokens: np.ndarray, offsets: torch.Tensor, context_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[i : i + context_length + 1] for i in offsets.tolist()]).astype(np.int64)
    xy = torch.from_numpy(rows)
    if device.type == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    return xy[:, :-1], xy[:, 1:]


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

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step."""
        offsets = torch.randint(
            len(self.tokens) - self.context_length - 1, (self.global_batch_size,), generator=self.generator
        )
        mine = offsets.view(self.grad_accum_steps, self.world_size, self.device_batch_size)[:, self.rank]
        return [windows_to_batch(self.tokens, o, self.context_length, self.device) for o in mine]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def fixed_eval_batches(
    tokens: np.ndarray, context_length: int, batch_size: int, num_batches: int, rank: int, world_size: int, device: torch.device, seed: int = 1234
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `num_batches` val batches at every eval, whatever the world size; rank r takes
    every world_size-th one, and the caller sums loss over ranks."""
    check_enough_tokens(tokens, context_length, "val")
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(len(tokens) - context_length - 1, (num_batches, batch_size), generator=generator)
    return [windows_to_batch(tokens, o, context_length, device) for o in offsets[rank::world_size]]
