"""Next-token cross-entropy, with the number of correctly predicted tokens for accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanugpt.losses import check_ignore_index


class AutoregressiveLoss:
    """Mean cross-entropy over every target that is not `ignore_index`.

    Returns `(loss, correct, count)`: `correct` is the number of targets whose argmax
    prediction is right and `count` the number of targets scored, so accuracy stays exact
    when it is summed over micro-batches and ranks.
    """

    def __init__(self, ignore_index: int) -> None:
        check_ignore_index(ignore_index)
        self.ignore_index = ignore_index

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat_logits = logits.reshape(-1, logits.size(-1))
        flat_targets = targets.reshape(-1)
        loss = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=self.ignore_index)
        mask = flat_targets != self.ignore_index
        # "target logit is the max" == argmax hit (up to exact ties); amax + gather is ~7x faster
        # than argmax on CPU (argmax over rows is poorly vectorised there), which shows at tiny sizes.
        scores = flat_logits.detach()
        target_score = scores.gather(1, torch.where(mask, flat_targets, 0).unsqueeze(1)).squeeze(1)
        correct = ((target_score >= scores.amax(dim=-1)) & mask).sum()
        return loss, correct, mask.sum()
