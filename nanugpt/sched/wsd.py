"""Warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): linear warmup, the peak lr
for most of the run, then a decay over the last `decay_fraction` of `max_steps` to
`min_lr_ratio`. The stable phase needs no fixed end, so a run can be extended from a
pre-decay checkpoint."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SHAPES = ("linear", "cosine", "1-sqrt")


def wsd_lr_factor(
    step: int, warmup_steps: int, max_steps: int, decay_fraction: float, min_lr_ratio: float, decay_shape: str
) -> float:
    decay_steps = round(decay_fraction * max_steps)
    decay_start = max_steps - decay_steps
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    if decay_shape == "linear":
        drop = progress
    elif decay_shape == "cosine":
        drop = 0.5 * (1.0 - math.cos(math.pi * progress))
    else:  # 1-sqrt: Hägele et al.'s best cooldown shape
        drop = math.sqrt(progress)
    return 1.0 - (1.0 - min_lr_ratio) * drop


def wsd(
    optimizer: torch.optim.Optimizer,
    max_steps: int,
    warmup_steps: int = 100,
    decay_fraction: float = 0.2,
    min_lr_ratio: float = 0.0,
    decay_shape: str = "linear",
) -> LambdaLR:
    if decay_shape not in SHAPES:
        raise ValueError(f"sched.decay_shape={decay_shape!r} is not one of {', '.join(SHAPES)}.")
    if not 0.0 <= decay_fraction <= 1.0 or warmup_steps > max_steps - round(decay_fraction * max_steps):
        raise ValueError(
            f"sched.decay_fraction={decay_fraction} with sched.warmup_steps={warmup_steps} does not fit in "
            f"max_steps={max_steps}: warmup must end before the decay starts at step "
            f"{max_steps - round(decay_fraction * max_steps)}. Lower one of them."
        )
    return LambdaLR(
        optimizer, lambda step: wsd_lr_factor(step, warmup_steps, max_steps, decay_fraction, min_lr_ratio, decay_shape)
    )
