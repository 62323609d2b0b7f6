"""SGD with (Nesterov) momentum; weight decay on matrices only (all parameters with `decay_all`), as for AdamW."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanugpt.errors import check_value
from nanugpt.optim.adamw import check_lr_and_decay, param_groups


def sgd(
    model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float, decay_all: bool
) -> torch.optim.SGD:
    check_lr_and_decay(lr, weight_decay)
    check_value("optim.momentum", momentum, float, ge=0, lt=1, fix="Set 0 for plain SGD, or e.g. 0.9.")
    check_value("optim.nesterov", nesterov, bool, fix="Nesterov momentum (acts only when optim.momentum > 0).")
    return torch.optim.SGD(
        param_groups(model, weight_decay, decay_all), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0
    )
