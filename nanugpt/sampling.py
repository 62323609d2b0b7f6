"""Autoregressive sampling: temperature, top-k, top-p, greedy at temperature 0, with a KV cache.

With `use_cache=True` the prompt is prefilled once and every new token costs one position's
forward (see the decode API in nanugpt/models/base.py). Models with learned positions cannot
slide past their window, so both paths share one window policy: once the context would exceed
`context_length`, it restarts from the last `window_keep` tokens (default: half the window),
which the cached path re-prefills once per `context_length - window_keep` new tokens.
`window_keep=context_length` is the classic slide-by-one crop, recomputed every step. Because
the two paths feed the model exactly the same tokens at the same positions, their greedy
outputs are identical (tests/test_generate_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from nanugpt.errors import ConfigError


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, vocab) logits of the last position -> (B, 1) next token ids."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p={top_p} must be in (0, 1]; use top_p=null (or 1.0) to switch nucleus sampling off.")
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.inference_mode()  # cheaper than no_grad: no version counters or view tracking, ~1.5x per decode step at batch 1
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    window_keep: int | None = None,
    should_stop: Callable[[torch.Tensor], bool] | None = None,
    decode_step: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Extend (B, T) prompt ids by up to `max_new_tokens`.

    `should_stop(idx)` is asked after every token (e.g. "every row has hit a stop string").
    `decode_step` replaces `model.forward` for the one-token cached steps (a torch.compile'd
    forward, say)."""
    model.eval()
    L = model.context_length
    keep = L // 2 if window_keep is None else window_keep
    if not 1 <= keep <= L:
        raise ConfigError(
            f"window_keep={window_keep} must be between 1 and the model's context_length={L}; pass a smaller "
            "window_keep, or window_keep=null for half the window."
        )
    step_fn = model if decode_step is None else decode_step
    cache = model.new_kv_cache(idx.size(0)) if use_cache else None
    start = max(0, idx.size(1) - L)  # where the model's context begins in idx
    cached = 0  # tokens of idx[:, start:] already in the cache
    for _ in range(max_new_tokens):
        if idx.size(1) - start > L:  # window full: restart from the last `keep` tokens
            start, cached = idx.size(1) - keep, 0
        if cache is None:
            hidden = model(idx[:, start:])
        elif cached == 0:  # prefill the whole context
            hidden = model(idx[:, start:], kv_cache=cache, start_pos=0)
        else:  # one new token
            hidden = step_fn(idx[:, -1:], kv_cache=cache, start_pos=cached)
        cached = idx.size(1) - start
        next_ids = sample_next(model.logits(hidden[:, -1]), temperature, top_k, top_p, generator)
        idx = torch.cat([idx, next_ids], dim=1)
        if should_stop is not None and should_stop(idx):
            break
    return idx
