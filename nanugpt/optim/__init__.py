"""Optimizers: `_partial_` factories called with the model (`instantiate(cfg.optim)(model)`)."""

from __future__ import annotations

from typing import Any

import torch

from nanugpt.dist import is_dtensor


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in this rank's optimizer state tensors (moments, momentum buffers; under FSDP
    its shards); zero until the first step creates them."""

    def walk(x: Any) -> int:
        if is_dtensor(x):  # this rank's shard
            x = x.to_local()
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    sd = optimizer.state_dict()
    return walk(sd["state"]) if "state" in sd else walk(sd)  # wrappers nest whole state dicts
