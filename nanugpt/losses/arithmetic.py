"""Cross-entropy on the answer tokens only; accuracy counts whole answers, not digits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanugpt.losses import check_ignore_index


class AnswerLoss:
    """Mean cross-entropy over the targets that are not `ignore_index` (the data masks the
    prompt with it). `correct` counts rows whose every answer token is right and `count` the
    rows, so val/acc is exact-match accuracy: 1 - 1 wrong digit in 1000 is not 99.9% right."""

    def __init__(self, ignore_index: int) -> None:
        check_ignore_index(ignore_index)
        self.ignore_index = ignore_index

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=self.ignore_index
        )
        scored = targets != self.ignore_index
        token_right = (logits.argmax(dim=-1) == targets) | ~scored
        correct = token_right.all(dim=1).sum()
        return loss, correct, torch.tensor(targets.shape[0], device=targets.device)
