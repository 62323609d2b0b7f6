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

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor, return_logits: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns `(logits or None, loss, correct, count)`; logits only when asked for,
        so the (B, T, vocab) tensor need not outlive the loss."""
        logits = self.model.logits(self.model(idx))
        loss, correct, count = self.loss_fn(logits, targets)
        return (logits if return_logits else None), loss, correct, count
