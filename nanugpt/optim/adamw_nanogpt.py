"""AdamW as nanoGPT configures it: weight decay on ≥2-D weights only (not norms, biases), the
fused CUDA kernel when the parameters are on a GPU, else the multi-tensor (foreach) path."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanugpt.optim.adamw import param_groups


def adamw_nanogpt(
    model: nn.Module,
    lr: float = 6e-4,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    on_cuda = next(model.parameters()).is_cuda  # train.py moves the model before building this
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, **kernel)
