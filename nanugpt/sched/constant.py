"""Linear warmup, then the peak lr until the end."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def constant_lr_factor(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def constant(optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int = 100) -> LambdaLR:
    del max_steps  # same signature as the other schedules; a constant lr needs no length
    return LambdaLR(optimizer, lambda step: constant_lr_factor(step, warmup_steps))
