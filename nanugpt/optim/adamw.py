"""AdamW with weight decay on matrices only (embeddings and linear weights), not on norms and
biases, unless `decay_all` (Power et al. 2022's grokking setup, and the reference system's, decay
every parameter); the fused CUDA kernel when the parameters are on a GPU, else the multi-tensor
(foreach) path. `optim=adamw` and `optim=adamw_nanogpt` (nanoGPT's setup, the same) are its configs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from nanugpt.errors import ConfigError, check_value


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Matrices, then norms and biases (decayed only with `decay_all`): two groups either way, so
    a checkpoint resumes across a change of `decay_all`."""
    check_decay_all(decay_all)
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": weight_decay if decay_all else 0.0},
    ]


def check_decay_all(decay_all: bool) -> None:
    check_value("optim.decay_all", decay_all, bool, fix="true also decays norm gains and biases.")


def check_lr_and_decay(lr: float, weight_decay: float) -> None:
    check_value("optim.lr", lr, float, gt=0, fix="Set the peak learning rate, e.g. 3e-4.")
    check_value("optim.weight_decay", weight_decay, float, ge=0, fix="Set 0 for no weight decay, or e.g. 0.1.")


def check_betas(key: str, betas: tuple[float, float]) -> None:
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        raise ConfigError(f"{key}={betas!r} must be two numbers [beta1, beta2]. Set e.g. {key}=[0.9,0.95].")
    for i, beta in enumerate(betas):
        check_value(f"{key}[{i}]", beta, float, ge=0, lt=1, fix=f"Both are moment decay rates; e.g. {key}=[0.9,0.95].")


def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool | None,
    decay_all: bool,
) -> torch.optim.AdamW:
    check_lr_and_decay(lr, weight_decay)
    check_betas("optim.betas", betas)
    check_value("optim.eps", eps, float, gt=0, fix="Set a small positive number, e.g. 1e-8.")
    check_value("optim.fused", fused, bool, null="the fused kernel when every parameter is on CUDA, else foreach")
    groups = param_groups(model, weight_decay, decay_all)
    if fused is None:
        # torch's own default is foreach on CUDA, the per-tensor loop on CPU: pick the single
        # fused kernel on CUDA, and the multi-tensor path everywhere else.
        fused = all(p.is_cuda for g in groups for p in g["params"])
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kernel)
