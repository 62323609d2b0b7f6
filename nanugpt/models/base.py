"""What every model offers, and the parts they share; gpt, gpt_modern, llama, tiny_transformer and
the transformers-built hf_gpt2 / hf_llama all fit this shape.

`CausalLM` documents the contract once: it is all that `nanugpt.sampling.generate`, the trainer,
the benchmark and checkpoints rely on. `CausalLMBase` implements the shared parts once: config
validation, the context check, parameter and FLOP counts, and the KV cache.

Decode API (all that `generate` needs):

    cache = model.new_kv_cache(batch_size)            # empty cache, one slot per layer
    h = model(idx, kv_cache=cache, start_pos=0)       # prefill: (B, T) prompt, fills cache[0:T]
    h = model(next_ids, kv_cache=cache, start_pos=T)  # decode: (B, 1), attends to cache[0:T+1]
    logits = model.logits(h[:, -1])

`start_pos` is the absolute position of idx[:, 0]; tokens at positions >= start_pos in the cache
are overwritten, so `start_pos=0` re-prefills. Without a cache, `model(idx)` is the plain
training forward. `start_pos + T` may not exceed `model.context_length`.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, Protocol, runtime_checkable

import torch
import torch.nn as nn

from nanugpt.errors import ConfigError, check_value
from nanugpt.models.attention import KVCache


@runtime_checkable
class CausalLM(Protocol):
    vocab_size: int
    context_length: int

    @property
    def blocks(self) -> nn.ModuleList:
        """The repeated transformer blocks in order, each a submodule of the model: the units that
        FSDP2's `fully_shard` and activation checkpointing wrap. Each is called as
        `block(x, kv_cache, start_pos)` (the hf models: transformers' own layers)."""
        ...

    def forward(self, idx: torch.Tensor, kv_cache: Any = None, start_pos: int = 0) -> torch.Tensor:
        """Token ids (B, T) at positions start_pos.. -> final hidden states (B, T, n_embd); with
        `kv_cache` (from `new_kv_cache`), keys/values are stored and reused. Called as `model(idx)`."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., n_embd) -> logits (..., vocab_size); the head lives here, so the
        loss can be fused with it and decoding computes it for the last position only."""
        ...

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> Any:
        """An empty cache for `context_length` positions, on the model's device."""
        ...

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, a tied head counted once; `non_embedding` leaves out the lookup tables
        (position embeddings, and token embeddings that are not also the head)."""
        ...

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6·N_non-embedding + 12·n_layer·n_embd·context_length."""
        ...


def _fail(key: str, value: Any, problem: str, fix: str) -> NoReturn:
    raise ConfigError(f"model.{key}={value!r} {problem}; {fix}.")


def require_size(key: str, value: Any, fix: str = "Pick a size as in nanugpt/conf/model/*.yaml.") -> None:
    """A whole number >= 1 (a width, a count, a length)."""
    check_value(f"model.{key}", value, int, ge=1, fix=fix)


def require_dropout(value: Any) -> None:
    check_value("model.dropout", value, float, ge=0, lt=1, fix="Use 0.0 for none, about 0.1-0.2 on small data.")


def require_rope(n_embd: int, n_head: int, rope_theta: Any) -> None:
    """RoPE rotates channel pairs, so each head needs an even width; theta is the base of its angles."""
    if (n_embd // n_head) % 2 != 0:
        even_widths = [h for h in range(n_head, 0, -1) if n_embd % h == 0 and (n_embd // h) % 2 == 0]
        _fail(
            "n_head",
            n_head,
            f"gives heads of odd width model.n_embd/model.n_head={n_embd}/{n_head}={n_embd // n_head}, and RoPE "
            "rotates channel pairs",
            f"pick model.n_head={even_widths[0]}" if even_widths else "make model.n_embd even",
        )
    check_value(
        "model.rope_theta", rope_theta, float, gt=0, fix="Use 10000.0 (Llama 2, GPT-NeoX) or 500000.0 (Llama 3)."
    )


def check_shape(vocab_size: Any, context_length: Any, n_layer: Any, n_head: Any, n_kv_head: Any, n_embd: Any) -> None:
    """The sizes every model has, checked before anything is built."""
    if vocab_size is None:
        _fail(
            "vocab_size",
            vocab_size,
            "reached the model",
            "leave it null in a training run (the prepared data's metadata fills it in), or set "
            "model.vocab_size to the tokenizer's vocab size when building a model yourself",
        )
    require_size("vocab_size", vocab_size)
    require_size("context_length", context_length, "Set it to the length of the training windows (e.g. 1024).")
    require_size("n_layer", n_layer)
    require_size("n_embd", n_embd)
    require_size("n_head", n_head)
    require_size("n_kv_head", n_kv_head, "Set model.n_kv_head=model.n_head for plain multi-head attention.")
    if n_embd % n_head != 0:
        divisor = max(h for h in range(1, n_head) if n_embd % h == 0)
        _fail(
            "n_head",
            n_head,
            f"does not divide model.n_embd={n_embd} into equal heads",
            f"pick a head count that divides it (e.g. model.n_head={divisor})",
        )
    if n_head % n_kv_head != 0:
        _fail(
            "n_kv_head",
            n_kv_head,
            f"does not divide model.n_head={n_head} (each key/value head serves a whole group of query heads)",
            f"pick one of the divisors of model.n_head: {[h for h in range(1, n_head + 1) if n_head % h == 0]}",
        )


def init_gpt2_weights(model: nn.Module, residual_projections: tuple[str, ...], n_layer: int) -> None:
    """GPT-2's init: linear and embedding weights ~ N(0, 0.02), biases zero; the projections back
    into the residual stream ~ N(0, 0.02/sqrt(2·n_layer)), so its variance does not grow with depth."""

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    model.apply(init)
    for name, p in model.named_parameters():
        if name.endswith(residual_projections):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


class CausalLMBase(nn.Module):
    """The shared parts of a `CausalLM`. A model calls `super().__init__(vocab_size, context_length,
    n_layer, n_head, n_kv_head, n_embd)` (validated here, before it builds anything), calls
    `check_positions` at the top of `forward`, and provides `blocks`, `forward` and `logits` itself."""

    def __init__(
        self, vocab_size: int, context_length: int, n_layer: int, n_head: int, n_kv_head: int, n_embd: int
    ) -> None:
        super().__init__()
        check_shape(vocab_size, context_length, n_layer, n_head, n_kv_head, n_embd)
        self.vocab_size, self.context_length = vocab_size, context_length
        self.n_layer, self.n_head, self.n_kv_head, self.n_embd = n_layer, n_head, n_kv_head, n_embd
        self.head_dim = n_embd // n_head

    def check_positions(self, start_pos: int, length: int) -> None:
        if start_pos + length > self.context_length:
            raise ConfigError(
                f"Positions up to {start_pos + length} exceed model.context_length={self.context_length}; feed at "
                f"most {self.context_length} positions (start_pos + tokens), or raise model.context_length (to the "
                "data's row length when training)."
            )

    def num_params(self, non_embedding: bool = False) -> int:
        """A lookup table is an nn.Embedding whose weight no nn.Linear shares: a tied head's table
        does a matmul, so it stays in the N of 6N."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            heads = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
            tables = {id(m.weight): m.weight for m in self.modules() if isinstance(m, nn.Embedding)}
            n -= sum(w.numel() for key, w in tables.items() if key not in heads)
        return n

    def flops_per_token(self) -> int:
        """6N for the matmuls (forward 2N, backward 4N), plus 12·n_layer·n_embd·context_length for
        the attention scores and values (PaLM, app. B; nanoGPT's estimate_mfu)."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.n_layer * self.n_embd * self.context_length

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        """Only n_kv_head heads are cached: grouped-query attention's memory saving."""
        weight = next(self.parameters())
        return KVCache(
            self.n_layer,
            batch_size,
            self.n_kv_head,
            self.context_length,
            self.head_dim,
            weight.device,
            dtype or weight.dtype,
        )
