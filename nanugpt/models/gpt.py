"""GPT-2 architecture in plain torch, after nanoGPT's model.py.

Token + learned position embeddings, pre-LayerNorm blocks, causal self-attention through
F.scaled_dot_product_attention (flash/efficient kernels where the device has them), GELU MLP,
and an output head tied to the token embedding.

Decode API (shared by every model, see nanugpt/models/attention.py; all that
`nanugpt.sampling.generate` needs):

    cache = model.new_kv_cache(batch_size)            # empty KVCache, one slot per layer
    h = model(idx, kv_cache=cache, start_pos=0)       # prefill: (B, T) prompt, fills cache[0:T]
    h = model(next_ids, kv_cache=cache, start_pos=T)  # decode: (B, 1), attends to cache[0:T+1]
    logits = model.logits(h[:, -1])

`start_pos` is the absolute position of idx[:, 0]; tokens at positions >= start_pos in the cache
are overwritten, so `start_pos=0` re-prefills. Without a cache, `model(idx)` is the plain
training forward. `model.context_length` bounds start_pos + T (learned positions).

`vocab_multiple` pads the embedding/head to a multiple of 64 (or 128) rows for faster GPU
matmuls; `logits()` slices the padding off, so it is never sampled and the loss is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from nanugpt.errors import ConfigError
from nanugpt.models.attention import KVCache, causal_attention


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        if n_embd % n_head != 0:
            raise ConfigError(
                f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}; pick a head count that divides it "
                f"(e.g. model.n_head={next(h for h in range(n_head, 0, -1) if n_embd % h == 0)})."
            )
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
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout, layer_idx)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias, dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, start_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int = 256,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        vocab_multiple: int = 1,
    ) -> None:
        super().__init__()
        if vocab_multiple < 1:
            raise ValueError(
                f"model.vocab_multiple={vocab_multiple} must be >= 1 (1 = no padding; 64 or 128 for GPUs)."
            )
        self.vocab_size = vocab_size
        padded_vocab = -(-vocab_size // vocab_multiple) * vocab_multiple
        self.context_length = context_length
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
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

        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting the tied head once; `non_embedding` drops position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls plus the attention term (PaLM, app. B)."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.n_layer * self.n_embd * self.context_length

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        weight = self.lm_head.weight
        head_dim = self.n_embd // self.n_head
        return KVCache(
            self.n_layer, batch_size, self.n_head, self.context_length, head_dim, weight.device, dtype or weight.dtype
        )

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """Token ids (B, T) at positions start_pos.. -> final hidden states (B, T, n_embd);
        the head lives in `logits`. With `kv_cache`, keys/values are stored and reused."""
        B, T = idx.shape
        if start_pos + T > self.context_length:
            raise ValueError(
                f"Positions up to {start_pos + T} exceed the model's context_length={self.context_length}; "
                "pass shorter inputs or raise model.context_length."
            )
        pos = torch.arange(start_pos, start_pos + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, kv_cache, start_pos)
        return self.transformer.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits over the real vocab (the padding rows are cut off)."""
        logits = self.lm_head(hidden)
        return logits if logits.size(-1) == self.vocab_size else logits[..., : self.vocab_size]
