"""Autoregressive sampling: temperature, top-k, top-p, greedy at temperature 0."""

from __future__ import annotations

import torch
import torch.nn as nn


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """(B, vocab) logits of the last position -> (B, 1) next token ids."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend (B, T) prompt ids by `max_new_tokens`, cropping the context to the model's window."""
    model.eval()
    for _ in range(max_new_tokens):
        context = idx[:, -model.context_length :]
        logits = model.logits(model(context)[:, -1])
        idx = torch.cat([idx, sample_next(logits, temperature, top_k, top_p, generator)], dim=1)
    return idx
