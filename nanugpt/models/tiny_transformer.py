"""A small causal transformer for algorithmic tasks (grokking, arithmetic), in plain torch.

Power et al. 2022's decoder: 2 layers, width 128, 4 heads, learned positions, and an untied
output head (the answer tokens need not share their input embedding). The blocks are GPT-2's
pre-LayerNorm ones from nanugpt/models/gpt.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nanugpt.models.attention import KVCache
from nanugpt.models.base import CausalLMBase, require_dropout
from nanugpt.models.gpt import Block


class TinyTransformer(CausalLMBase):
    def __init__(
        self, vocab_size: int, context_length: int, n_layer: int, n_head: int, n_embd: int, dropout: float
    ) -> None:
        super().__init__(vocab_size, context_length, n_layer, n_head, n_head, n_embd)
        require_dropout(dropout)
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(context_length, n_embd)
        self.blocks = nn.ModuleList(
            [Block(n_embd, n_head, bias=True, dropout=dropout, layer_idx=i) for i in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        T = idx.size(1)
        self.check_positions(start_pos, T)
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(start_pos, start_pos + T, device=idx.device))
        for block in self.blocks:
            x = block(x, kv_cache, start_pos)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)
