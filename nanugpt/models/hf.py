"""Models built from `transformers` config classes, randomly initialised (no hub download).

Needs the optional extra: `pip install -e ".[hf]"`. The wrapper gives a Hugging Face causal LM
the interface nanugpt's loop expects: `forward(idx) -> hidden (B, T, C)`, `logits(hidden)`,
`context_length`, `vocab_size`, `num_params()`, `flops_per_token()`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "model=hf_gpt2 / hf_llama need the `transformers` package, which is an optional extra: "
            'pip install -e ".[hf]" (it keeps your torch). Or pick a plain-torch model: model=gpt_tiny, llama_tiny, '
            "gpt_modern."
        ) from e
    return transformers


class HFKVCache:
    """Holds transformers' DynamicCache for `generate`'s decode loop; a prefill replaces it."""

    def __init__(self) -> None:
        self.cache: Any = None


class HFCausalLM(nn.Module):
    def __init__(self, hf_model: nn.Module, context_length: int, vocab_size: int, n_layer: int, n_embd: int) -> None:
        super().__init__()
        self.hf = hf_model
        self.context_length, self.vocab_size = context_length, vocab_size
        self.n_layer, self.n_embd = n_layer, n_embd
        # transformers 5.x renamed `past_key_values` to `cache`
        self._cache_kwarg = (
            "cache" if "cache" in inspect.signature(hf_model.base_model.forward).parameters else "past_key_values"
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (tied weights counted once); `non_embedding` drops token and position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.hf.modules() if isinstance(m, nn.Embedding))
        return n

    def flops_per_token(self) -> int:
        head = self.hf.get_output_embeddings().weight.numel()
        tied = self.hf.get_output_embeddings().weight is self.hf.get_input_embeddings().weight
        n = self.num_params(non_embedding=True) + (head if tied else 0)
        return 6 * n + 12 * self.n_layer * self.n_embd * self.context_length

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> HFKVCache:
        return HFKVCache()

    def forward(self, idx: torch.Tensor, kv_cache: Any = None, start_pos: int = 0) -> torch.Tensor:
        """Token ids (B, T) at positions start_pos.. -> final hidden states (B, T, n_embd)."""
        T = idx.size(1)
        if start_pos + T > self.context_length:
            raise ValueError(
                f"Positions up to {start_pos + T} exceed the model's context_length={self.context_length}; "
                "pass shorter inputs or raise model.context_length."
            )
        cache = None
        if kv_cache is not None:
            if start_pos == 0 or kv_cache.cache is None:  # a prefill (re)starts the cache
                kv_cache.cache = _transformers().DynamicCache(config=self.hf.config)
            elif kv_cache.cache.get_seq_length() != start_pos:
                raise ValueError(
                    f"The cache holds {kv_cache.cache.get_seq_length()} positions, not start_pos={start_pos}."
                )
            cache = {self._cache_kwarg: kv_cache.cache}
        positions = torch.arange(start_pos, start_pos + T, device=idx.device).unsqueeze(0)
        out = self.hf.base_model(input_ids=idx, position_ids=positions, use_cache=kv_cache is not None, **(cache or {}))
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf.get_output_embeddings()(hidden)


def hf_gpt2(
    vocab_size: int,
    context_length: int = 1024,
    n_layer: int = 12,
    n_head: int = 12,
    n_embd: int = 768,
    dropout: float = 0.0,
) -> HFCausalLM:
    """transformers' GPT2LMHeadModel (tied head, learned positions, GELU MLP)."""
    t = _transformers()
    config = t.GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        attn_implementation="sdpa",
        bos_token_id=None,
        eos_token_id=None,  # GPT-2's 50256 may lie outside a smaller vocab
    )
    return HFCausalLM(t.GPT2LMHeadModel(config), context_length, vocab_size, n_layer, n_embd)


def hf_llama(
    vocab_size: int,
    context_length: int = 2048,
    n_layer: int = 22,
    n_head: int = 32,
    n_kv_head: int | None = None,
    n_embd: int = 2048,
    intermediate_size: int = 5632,
    rope_theta: float = 10000.0,
    norm_eps: float = 1e-5,
    tie_embeddings: bool = False,
) -> HFCausalLM:
    """transformers' LlamaForCausalLM (RMSNorm, RoPE, SwiGLU, grouped-query attention)."""
    t = _transformers()
    config = t.LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=context_length,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head or n_head,
        hidden_size=n_embd,
        intermediate_size=intermediate_size,
        rope_theta=rope_theta,
        rms_norm_eps=norm_eps,
        tie_word_embeddings=tie_embeddings,
        attn_implementation="sdpa",
    )
    return HFCausalLM(t.LlamaForCausalLM(config), context_length, vocab_size, n_layer, n_embd)
