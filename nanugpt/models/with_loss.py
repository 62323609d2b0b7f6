"""The model and its loss as one module, so `torch.compile` sees (and fuses) both."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class ModelWithLoss(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns `(loss, correct, count)`; the (B, T, vocab) logits do not outlive the loss."""
        return self.loss_fn(self.model.logits(self.model(idx)), targets)
