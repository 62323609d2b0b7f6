"""Causal attention with an optional KV cache, shared by the plain-torch models.

`KVCache` holds keys/values per layer, written at `start_pos`; the decode API that drives it is
documented in nanugpt/models/base.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer for incremental decoding: (n_layer, B, n_kv_head, max_len, head_dim)."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, head_dim) at positions start_pos.. and return all keys
        and values up to the last one stored."""
        end = start_pos + k.size(2)
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: KVCache | Any = None,
    layer: int = 0,
    start_pos: int = 0,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """q: (B, n_head, T, hd); k, v: (B, n_kv_head, T, hd), already rotated to positions
    start_pos.. With a cache, k and v are stored and attention covers every cached position."""
    T = q.size(2)
    mask, causal = None, True
    if kv_cache is not None:
        k, v = kv_cache.update(layer, start_pos, k, v)
        if T == 1:  # one new token sees every cached one
            causal = False
        elif start_pos > 0:  # a chunk after cached tokens: query i sees keys 0..start_pos+i
            mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=q.device).tril(diagonal=start_pos)
            causal = False
    if k.size(1) != q.size(1):  # grouped-query attention: each kv head serves a group of query heads
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p)
