"""SGD with (Nesterov) momentum; weight decay on matrices only, as for AdamW."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanugpt.optim.adamw import param_groups


def sgd(
    model: nn.Module, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0
) -> torch.optim.SGD:
    return torch.optim.SGD(
        param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0
    )
