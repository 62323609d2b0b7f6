"""The speedrun-style GPT (after Keller Jordan's modded-nanogpt): the GPT-2 shape with the
changes that made it train fastest per token.

- rotary position embeddings instead of learned positions;
- QK-norm: queries and keys RMS-normalised per head before attention;
- ReLU² MLP (relu(x)**2, 4x width);
- parameter-free RMSNorm before each sublayer, after the embedding and at the end;
- output projections of every block and the head zero-initialised, so each block starts as the
  identity and the first logits are uniform;
- logit soft-cap: logits = cap * tanh(logits / cap);
- no biases; untied head.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanugpt.errors import check_value
from nanugpt.models.attention import KVCache, causal_attention
from nanugpt.models.base import CausalLMBase, require_rope
from nanugpt.models.rope import Rotary


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, rotary: Rotary, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        q, k = self.rotary(rms_norm(q), start_pos), self.rotary(rms_norm(k), start_pos)  # QK-norm, then rotate
        y = causal_attention(q, k, v, kv_cache, self.layer_idx, start_pos)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, rotary: Rotary, layer_idx: int) -> None:
        super().__init__()
        self.attn = Attention(n_embd, n_head, rotary, layer_idx)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), kv_cache, start_pos)
        return x + self.mlp(rms_norm(x))


class GPTModern(CausalLMBase):
    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        rope_theta: float,
        logit_softcap: float,
    ) -> None:
        super().__init__(vocab_size, context_length, n_layer, n_head, n_head, n_embd)
        require_rope(n_embd, n_head, rope_theta)
        check_value(
            "model.logit_softcap",
            logit_softcap,
            float,
            ge=0,
            fix="Use 0 to switch the cap off, or the speedrun's 30.0.",
        )
        self.logit_softcap = logit_softcap
        self.rotary = Rotary(self.head_dim, context_length, rope_theta)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, self.rotary, i) for i in range(n_layer)])
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                nn.init.zeros_(p)  # blocks start as the identity, logits start uniform
            elif name.endswith("c_fc.weight") or name.endswith("c_attn.weight"):
                nn.init.normal_(p, mean=0.0, std=n_embd**-0.5)
            elif name == "wte.weight":
                nn.init.normal_(p, mean=0.0, std=1.0)  # rms-normed right after the lookup

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        self.check_positions(start_pos, idx.size(1))
        x = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, kv_cache, start_pos)
        return rms_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()  # the cap's tanh in float32
        if self.logit_softcap > 0:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits
