"""GPT-2 architecture in plain torch, after nanoGPT's model.py.

Token + learned position embeddings, pre-LayerNorm blocks, causal self-attention through
F.scaled_dot_product_attention (flash/efficient kernels where the device has them), GELU MLP,
and an output head tied to the token embedding. The decode API (KV cache) is the one of every
model, see nanugpt/models/base.py.

`vocab_multiple` pads the embedding/head to a multiple of 64 (or 128) rows for faster GPU
matmuls; `logits()` slices the padding off, so it is never sampled and the loss is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nanugpt.errors import check_value
from nanugpt.models.attention import KVCache, causal_attention
from nanugpt.models.base import CausalLMBase, init_gpt2_weights, require_dropout, require_size


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(
            q, k, v, kv_cache, self.layer_idx, start_pos, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout, layer_idx)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias, dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, start_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(CausalLMBase):
    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        bias: bool,
        vocab_multiple: int,
    ) -> None:
        super().__init__(vocab_size, context_length, n_layer, n_head, n_head, n_embd)
        require_dropout(dropout)
        check_value("model.bias", bias, bool, fix="GPT-2 has biases (true); false is a little faster.")
        require_size("vocab_multiple", vocab_multiple, "Use 1 for no padding, 64 or 128 for GPU matmuls.")
        padded_vocab = -(-vocab_size // vocab_multiple) * vocab_multiple
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(padded_vocab, n_embd),
                wpe=nn.Embedding(context_length, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList([Block(n_embd, n_head, bias, dropout, i) for i in range(n_layer)]),
                ln_f=nn.LayerNorm(n_embd, bias=bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, padded_vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        init_gpt2_weights(self, ("c_proj.weight",), n_layer)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        T = idx.size(1)
        self.check_positions(start_pos, T)
        pos = torch.arange(start_pos, start_pos + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, kv_cache, start_pos)
        return self.transformer.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits over the real vocab (the padding rows are cut off)."""
        logits = self.lm_head(hidden)
        return logits if logits.size(-1) == self.vocab_size else logits[..., : self.vocab_size]
