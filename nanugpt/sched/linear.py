"""Linear warmup, then linear decay to `min_lr_ratio` of the peak lr at `max_steps`."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 1.0 - (1.0 - min_lr_ratio) * progress


def linear(
    optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.0
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: linear_lr_factor(step, warmup_steps, max_steps, min_lr_ratio))
