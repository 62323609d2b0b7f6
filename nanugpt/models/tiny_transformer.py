"""A small causal transformer for algorithmic tasks (grokking, arithmetic), in plain torch.

Power et al. 2022's decoder: 2 layers, width 128, 4 heads, learned positions, and an untied
output head (the answer tokens need not share their input embedding). The blocks are GPT-2's
pre-LayerNorm ones from nanugpt/models/gpt.py, so the decode API (KV cache) is the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nanugpt.models.attention import KVCache
from nanugpt.models.gpt import Block


class TinyTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int = 4,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size, self.context_length = vocab_size, context_length
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(context_length, n_embd)
        self.blocks = nn.ModuleList(
            [Block(n_embd, n_head, bias=True, dropout=dropout, layer_idx=i) for i in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls plus the attention term (PaLM, app. B)."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.n_layer * self.n_embd * self.context_length

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        w = self.head.weight
        return KVCache(
            self.n_layer,
            batch_size,
            self.n_head,
            self.context_length,
            self.n_embd // self.n_head,
            w.device,
            dtype or w.dtype,
        )

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """Token ids (B, T) at positions start_pos.. -> final hidden states (B, T, n_embd)."""
        T = idx.shape[1]
        if start_pos + T > self.context_length:
            raise ValueError(
                f"Positions up to {start_pos + T} exceed the model's context_length={self.context_length}; "
                "raise model.context_length to the data's row length."
            )
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(start_pos, start_pos + T, device=idx.device))
        for block in self.blocks:
            x = block(x, kv_cache, start_pos)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)
