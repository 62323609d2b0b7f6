"""Llama architecture in plain torch (Touvron et al. 2023; Llama 2/3, TinyLlama).

Token embedding (no learned positions), pre-RMSNorm blocks, rotary position embeddings on
queries and keys, grouped-query attention (n_kv_head key/value heads shared by groups of query
heads) through F.scaled_dot_product_attention, SwiGLU MLP, no biases, and an output head that is
untied from the embedding unless `tie_embeddings=true`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanugpt.errors import check_value
from nanugpt.models.attention import KVCache, causal_attention
from nanugpt.models.base import CausalLMBase, init_gpt2_weights, require_rope, require_size
from nanugpt.models.rope import Rotary


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, rotary: Rotary, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.wq = nn.Linear(n_embd, n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(n_embd, n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(n_embd, n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(n_head * self.head_dim, n_embd, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = self.rotary(q, start_pos), self.rotary(k, start_pos)
        y = causal_attention(q, k, v, kv_cache, self.layer_idx, start_pos)  # repeats kv heads for GQA
        return self.wo(y.transpose(1, 2).contiguous().view(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(n_embd, hidden, bias=False)  # gate
        self.w3 = nn.Linear(n_embd, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, n_embd, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(
        self, n_embd: int, n_head: int, n_kv_head: int, hidden: int, norm_eps: float, rotary: Rotary, layer_idx: int
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(n_embd, eps=norm_eps)
        self.attn = Attention(n_embd, n_head, n_kv_head, rotary, layer_idx)
        self.mlp_norm = nn.RMSNorm(n_embd, eps=norm_eps)
        self.mlp = SwiGLU(n_embd, hidden)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), kv_cache, start_pos)
        return x + self.mlp(self.mlp_norm(x))


class Llama(CausalLMBase):
    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        n_layer: int,
        n_head: int,
        n_kv_head: int,
        n_embd: int,
        intermediate_size: int,
        rope_theta: float,
        norm_eps: float,
        tie_embeddings: bool,
    ) -> None:
        super().__init__(vocab_size, context_length, n_layer, n_head, n_kv_head, n_embd)
        require_llama(n_embd, n_head, intermediate_size, rope_theta, norm_eps, tie_embeddings)
        # One rotary table shared by every layer (a non-persistent buffer, so not in checkpoints).
        self.rotary = Rotary(self.head_dim, context_length, rope_theta)
        self.tok_embeddings = nn.Embedding(vocab_size, n_embd)
        self.layers = nn.ModuleList(
            [Block(n_embd, n_head, n_kv_head, intermediate_size, norm_eps, self.rotary, i) for i in range(n_layer)]
        )
        self.norm = nn.RMSNorm(n_embd, eps=norm_eps)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        init_gpt2_weights(self, ("wo.weight", "w2.weight"), n_layer)
        if tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        self.check_positions(start_pos, idx.size(1))
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, kv_cache, start_pos)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def require_llama(
    n_embd: int, n_head: int, intermediate_size: int, rope_theta: float, norm_eps: float, tie_embeddings: bool
) -> None:
    """The Llama-only config values (plain torch and transformers-built alike)."""
    require_rope(n_embd, n_head, rope_theta)
    require_size(
        "intermediate_size", intermediate_size, f"Set the SwiGLU width, about 8/3 x model.n_embd (~{8 * n_embd // 3})."
    )
    check_value("model.norm_eps", norm_eps, float, gt=0, fix="Use RMSNorm's usual 1e-5.")
    check_value("model.tie_embeddings", tie_embeddings, bool, fix="true shares the token embedding with the head.")
