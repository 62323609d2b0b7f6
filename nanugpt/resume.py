"""What a resumed run takes from its checkpoint, and what from its config.

The checkpoint gives the optimizer's state (moments, step counts), the schedule's position and
the float16 loss scale reached; the config gives every hyperparameter: each param group's lr,
weight decay, betas, eps (Muon's groups too), the schedule's settings (warmup, min_lr_ratio,
max_steps, ...) and the loss scaler's growth settings. So a run
resumed with `optim.lr=3e-4` trains at the new lr from its next step, and the config saved with
its checkpoints says what it ran with. The run logs which keys changed since the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("nanugpt.train")

# Keys that differ between a run and its resumption without changing what it trains.
NOT_COMPARED = {"resume"}


def restore_optimizer_and_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    load_optimizer: Callable[[], None],
    scheduler_state: dict[str, Any],
) -> None:
    """Load the checkpoint's optimizer state (`load_optimizer()`: `optimizer.load_state_dict`,
    or a sharded checkpoint's loader) and schedule position into the optimizer and scheduler this
    config built, keeping this config's hyperparameters.

    Loading an optimizer state replaces each param group's settings with the saved ones, and a
    scheduler's state holds the saved base lrs (its lr function is rebuilt from the config, never
    saved), so both are put back from what the config built. The schedules are closed-form
    (LambdaLR), so stepping once to the checkpoint's position gives each group its lr there."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    load_optimizer()
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)
    position = {k: scheduler_state[k] for k in ("last_epoch", "_step_count")}
    scheduler.load_state_dict({**scheduler.state_dict(), **position, "last_epoch": position["last_epoch"] - 1})
    scheduler.step()  # sets every group's lr for the checkpoint's step, from this config's schedule
    scheduler.load_state_dict({**scheduler.state_dict(), **position})


def restore_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """The checkpoint's loss scale and count of steps since it last changed; this config's
    growth interval and factors. (A scaler that is off, not float16, ignores all of it.)"""
    position = {k: state[k] for k in ("scale", "_growth_tracker") if k in state}
    scaler.load_state_dict({**scaler.state_dict(), **position})


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...}; lists and empty sections stay whole values."""
    if not isinstance(cfg, dict) or not cfg:
        return {prefix: cfg}
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(saved: Any, current: dict[str, Any]) -> list[str]:
    """`key old -> new` for each config key that differs between a checkpoint's config (from
    outside: any value, or none) and this run's resolved config."""
    if not isinstance(saved, dict):
        return []
    old, new = flatten(saved), flatten(current)
    changes = []
    for key in dict.fromkeys([*new, *old]):
        if key.split(".")[0] in NOT_COMPARED or old.get(key, ...) == new.get(key, ...):
            continue
        before, after = (_show(d[key]) if key in d else "(unset)" for d in (old, new))
        changes.append(f"{key} {before} -> {after}")
    return changes


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def log_config_changes(saved: Any, current: dict[str, Any]) -> None:
    changes = config_changes(saved, current)
    if changes:
        log.info("resumed with changed config: %s", ", ".join(changes))
