"""A small causal transformer for algorithmic tasks (grokking, arithmetic).

Built from torch's own `nn.TransformerEncoderLayer` (pre-LayerNorm, GELU, causal mask) with
learned positions and an untied head, as in Power et al. 2022 (2 layers, width 128, 4 heads).
Same interface as `nanugpt.models.gpt.GPT`: forward(idx) -> hidden, logits(hidden).
"""

from __future__ import annotations

import torch
import torch.nn as nn


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
        if n_embd % n_head != 0:
            raise ValueError(f"model.n_embd={n_embd} must be divisible by model.n_head={n_head}.")
        self.vocab_size, self.context_length = vocab_size, context_length
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(context_length, n_embd)
        layer = nn.TransformerEncoderLayer(
            n_embd, n_head, 4 * n_embd, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls plus the attention term (PaLM, app. B)."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.n_layer * self.n_embd * self.context_length

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> final hidden states (B, T, n_embd)."""
        T = idx.shape[1]
        if T > self.context_length:
            raise ValueError(
                f"Sequence length {T} exceeds the model's context_length={self.context_length}; "
                "raise model.context_length to the data's row length."
            )
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        return self.ln_f(self.blocks(x, mask=mask, is_causal=True))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)
