"""Losses: called as `loss(logits, targets)`, each returns `(loss, correct, count)`."""

from __future__ import annotations

import math

from nanugpt.errors import check_range


def check_ignore_index(ignore_index: int) -> None:
    check_range(
        "loss.ignore_index",
        ignore_index,
        -math.inf,
        0,
        high_open=True,
        integer=True,
        fix="Token ids are >= 0, so the index that marks unscored targets must not be one; the example data "
        "marks them with -100.",
    )
