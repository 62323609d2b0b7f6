"""Models built from `transformers` config classes, randomly initialised (no hub download).

Needs the optional extra: `pip install -e ".[hf]"`. `HFCausalLM` gives a Hugging Face causal LM
the contract of every nanugpt model (nanugpt/models/base.py); its `blocks` are transformers' own
decoder layers, and its KV cache wraps transformers' DynamicCache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from nanugpt.models.base import CausalLMBase, require_dropout
from nanugpt.models.llama import require_llama


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


class HFCausalLM(CausalLMBase):
    def __init__(
        self,
        build: Callable[[], nn.Module],
        block_list: str,
        vocab_size: int,
        context_length: int,
        n_layer: int,
        n_head: int,
        n_kv_head: int,
        n_embd: int,
    ) -> None:
        """`build()` checks the model's own config values and makes the transformers model; it runs
        once the shared sizes are validated. `block_list` names the base model's list of decoder
        layers (GPT-2: `h`, Llama: `layers`)."""
        super().__init__(vocab_size, context_length, n_layer, n_head, n_kv_head, n_embd)
        self.hf = build()
        self.block_list = block_list
        # transformers 5.x renamed `past_key_values` to `cache`
        self._cache_kwarg = (
            "cache" if "cache" in inspect.signature(self.hf.base_model.forward).parameters else "past_key_values"
        )

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self.hf.base_model, self.block_list)

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> HFKVCache:
        return HFKVCache()

    def forward(self, idx: torch.Tensor, kv_cache: Any = None, start_pos: int = 0) -> torch.Tensor:
        T = idx.size(1)
        self.check_positions(start_pos, T)
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


def hf_gpt2(vocab_size: int, context_length: int, n_layer: int, n_head: int, n_embd: int, dropout: float) -> HFCausalLM:
    """transformers' GPT2LMHeadModel (tied head, learned positions, GELU MLP)."""
    t = _transformers()

    def build() -> nn.Module:
        require_dropout(dropout)
        return t.GPT2LMHeadModel(
            t.GPT2Config(
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
        )

    return HFCausalLM(build, "h", vocab_size, context_length, n_layer, n_head, n_head, n_embd)


def hf_llama(
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
) -> HFCausalLM:
    """transformers' LlamaForCausalLM (RMSNorm, RoPE, SwiGLU, grouped-query attention)."""
    t = _transformers()

    def build() -> nn.Module:
        require_llama(n_embd, n_head, intermediate_size, rope_theta, norm_eps, tie_embeddings)
        return t.LlamaForCausalLM(
            t.LlamaConfig(
                vocab_size=vocab_size,
                max_position_embeddings=context_length,
                num_hidden_layers=n_layer,
                num_attention_heads=n_head,
                num_key_value_heads=n_kv_head,
                hidden_size=n_embd,
                intermediate_size=intermediate_size,
                rope_theta=rope_theta,
                rms_norm_eps=norm_eps,
                tie_word_embeddings=tie_embeddings,
                attn_implementation="sdpa",
            )
        )

    return HFCausalLM(build, "layers", vocab_size, context_length, n_layer, n_head, n_kv_head, n_embd)
