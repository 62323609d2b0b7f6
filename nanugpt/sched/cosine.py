"""Linear warmup, then cosine decay to `min_lr_ratio` of the peak lr at `max_steps`."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine_lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine(
    optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.1
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_lr_factor(step, warmup_steps, max_steps, min_lr_ratio))
