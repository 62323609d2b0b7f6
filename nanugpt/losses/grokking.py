"""Cross-entropy on the last position only: for `a ∘ b =` the model must predict `c`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LastTokenLoss:
    """Mean cross-entropy of the last position's prediction; accuracy counts whole equations.

    Returns `(loss, correct, count)` like every loss here; earlier positions are never scored,
    whatever their targets hold.
    """

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        last_logits, last_targets = logits[:, -1, :], targets[:, -1]
        loss = F.cross_entropy(last_logits.float(), last_targets)
        correct = (last_logits.argmax(dim=-1) == last_targets).sum()
        return loss, correct, torch.tensor(last_targets.numel(), device=targets.device)
