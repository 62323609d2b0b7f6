"""Losses: called as `loss(logits, targets)`, each returns `(loss, correct, count)`."""

from __future__ import annotations

from nanugpt.errors import check_value


def check_ignore_index(ignore_index: int) -> None:
    check_value(
        "loss.ignore_index",
        ignore_index,
        int,
        lt=0,
        fix="Token ids are >= 0, so the index that marks unscored targets must not be one; the example data "
        "marks them with -100.",
    )
