"""The lr schedule: linear warmup, an optional stable phase at the peak lr, then a decay to
`min_lr_ratio` x the peak lr at `max_steps` (as torchtitan's one warmup-stable-decay schedule).

`sched=cosine`, `linear`, `constant` and `wsd` are configs of this one function:

    cosine, linear  decay_fraction: null   decay over every step after warmup, no stable phase
    constant        decay_fraction: 0.0    no decay: the peak lr to the end
    wsd             decay_fraction: 0.2    stable, then decay over the last 20% of the run

Warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024) needs no fixed end for its
stable phase, so a run can be extended from a pre-decay checkpoint; 1-sqrt is Hägele et al.'s
best cooldown shape. The scheduler is a LambdaLR with a plain function, so its state_dict holds
only the step count and lrs, and a resumed run continues the curve exactly.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from nanugpt.errors import ConfigError, check_value

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def lr_factor(
    step: int, warmup_steps: int, decay_start: int, decay_steps: int, decay_shape: str, min_lr_ratio: float
) -> float:
    """The multiple of the peak lr that optimizer step `step` (0-based) uses."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < decay_start or decay_steps == 0:
        return 1.0
    progress = min(1.0, (step - decay_start) / decay_steps)
    if decay_shape == "linear":
        remaining = 1.0 - progress
    elif decay_shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        remaining = 1.0 - math.sqrt(progress)
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining


def warmup_stable_decay(
    optimizer: torch.optim.Optimizer,
    max_steps: int,
    warmup_steps: int,
    decay_fraction: float | None,
    decay_shape: str,
    min_lr_ratio: float,
) -> LambdaLR:
    """`decay_fraction`: the share of `max_steps` the decay takes at the end; None: every step
    after warmup."""
    check_value(
        "sched.max_steps",
        max_steps,
        int,
        ge=1,
        fix="It follows training.max_steps unless set itself; set a positive step count.",
    )
    check_value(
        "sched.warmup_steps",
        warmup_steps,
        int,
        ge=0,
        fix="Set the number of warmup steps, 0 for none (a few percent of training.max_steps is usual).",
    )
    check_value(
        "sched.decay_fraction",
        decay_fraction,
        float,
        ge=0,
        le=1,
        null="decay over every step after warmup",
        fix="It is the share of the run the final decay takes: e.g. 0.2, 0 for none.",
    )
    check_value("sched.decay_shape", decay_shape, str, choices=DECAY_SHAPES, fix="Pick one (1-sqrt suits wsd).")
    check_value(
        "sched.min_lr_ratio",
        min_lr_ratio,
        float,
        ge=0,
        le=1,
        fix="The lr ends at min_lr_ratio x optim.lr: 0 decays to zero, 1 keeps the peak lr.",
    )
    decay_steps = max(0, max_steps - warmup_steps) if decay_fraction is None else round(decay_fraction * max_steps)
    decay_start = max_steps - decay_steps
    if decay_steps > 0 and warmup_steps > decay_start:
        raise ConfigError(
            f"sched.decay_fraction={decay_fraction} with sched.warmup_steps={warmup_steps} does not fit in "
            f"max_steps={max_steps}: warmup must end before the decay starts at step {decay_start}. Lower one of "
            "them."
        )
    return LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, decay_start, decay_steps, decay_shape, min_lr_ratio)
    )
