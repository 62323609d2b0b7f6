"""Llama architecture in plain torch (Touvron et al. 2023; Llama 2/3, TinyLlama).

Token embedding (no learned positions), pre-RMSNorm blocks, rotary position embeddings on
queries and keys, grouped-query attention (n_kv_head key/value heads shared by groups of query
heads) through F.scaled_dot_product_attention, SwiGLU MLP, no biases, and an output head that is
untied from the embedding unless `tie_embeddings=true`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanugpt.models.attention import KVCache, causal_attention
from nanugpt.models.rope import Rotary


def llama_mlp_hidden(n_embd: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4 x n_embd (same parameters as a 4x GELU MLP), rounded up."""
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, rotary: Rotary, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        if n_embd % n_head != 0:
            raise ValueError(f"model.n_embd={n_embd} must be divisible by model.n_head={n_head}.")
        if n_head % n_kv_head != 0:
            raise ValueError(
                f"model.n_head={n_head} must be a multiple of model.n_kv_head={n_kv_head} (each key/value "
                "head serves a whole group of query heads); pick n_kv_head among the divisors of n_head."
            )
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
        self, n_embd: int, n_head: int, n_kv_head: int, hidden: int, norm_eps: float, rotary: Rotary, layer_idx: int = 0
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(n_embd, eps=norm_eps)
        self.attn = Attention(n_embd, n_head, n_kv_head, rotary, layer_idx)
        self.mlp_norm = nn.RMSNorm(n_embd, eps=norm_eps)
        self.mlp = SwiGLU(n_embd, hidden)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), kv_cache, start_pos)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int = 256,
        n_layer: int = 4,
        n_head: int = 4,
        n_kv_head: int | None = None,
        n_embd: int = 128,
        intermediate_size: int | None = None,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.n_kv_head = n_kv_head or n_head
        hidden = intermediate_size or llama_mlp_hidden(n_embd)
        # One rotary table shared by every layer (a non-persistent buffer, so not in checkpoints).
        self.rotary = Rotary(n_embd // n_head, context_length, rope_theta)
        self.tok_embeddings = nn.Embedding(vocab_size, n_embd)
        self.layers = nn.ModuleList(
            [Block(n_embd, n_head, self.n_kv_head, hidden, norm_eps, self.rotary, i) for i in range(n_layer)]
        )
        self.norm = nn.RMSNorm(n_embd, eps=norm_eps)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        # Residual projections scaled down with depth, as in GPT-2 / nanoGPT.
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        if tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (a tied head counted once); `non_embedding` drops the token embedding
        (there are no position embeddings) but keeps an untied head, which does matmul FLOPs."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if non_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls plus the attention term (PaLM, app. B)."""
        n = self.num_params(non_embedding=True)
        if self.lm_head.weight is self.tok_embeddings.weight:
            n += self.lm_head.weight.numel()  # the tied head still does its matmul
        return 6 * n + 12 * self.n_layer * self.n_embd * self.context_length

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        weight = self.lm_head.weight  # only n_kv_head heads are cached: GQA's memory saving
        return KVCache(
            self.n_layer,
            batch_size,
            self.n_kv_head,
            self.context_length,
            self.n_embd // self.n_head,
            weight.device,
            dtype or weight.dtype,
        )

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """Token ids (B, T) at positions start_pos.. -> final hidden states (B, T, n_embd); the
        head lives in `logits`. With `kv_cache`, keys/values are stored and reused."""
        if start_pos + idx.size(1) > self.context_length:
            raise ValueError(
                f"Positions up to {start_pos + idx.size(1)} exceed the model's context_length={self.context_length}; "
                "pass shorter inputs or raise model.context_length."
            )
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, kv_cache, start_pos)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
