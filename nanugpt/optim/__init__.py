"""Optimizers: `_partial_` factories called with the model (`instantiate(cfg.optim)(model)`)."""

from __future__ import annotations

from typing import Any

import torch


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (moments, momentum buffers); zero until the
    first step creates them."""

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    sd = optimizer.state_dict()
    return walk(sd["state"]) if "state" in sd else walk(sd)  # wrappers nest whole state dicts
