"""Rotary position embeddings (Su et al. 2021), shared by the Llama and modern-GPT models.

Each pair of channels (i, i + head_dim/2) of a query or key at position t is rotated by the
angle t * theta^(-2i/head_dim), so q·k depends on positions only through their difference.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Rotary(nn.Module):
    def __init__(self, head_dim: int, context_length: int, theta: float) -> None:
        """head_dim must be even (the models check it with their config, see base.require_rope)."""
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context_length, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
        # Not saved in checkpoints: recomputed from the config, and exact in float32.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x: (B, n_head, T, head_dim) at positions start..start+T-1 -> same shape, rotated."""
        T = x.size(-2)
        cos, sin = self.cos[start : start + T].to(x.dtype), self.sin[start : start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # the "rotate half" layout of Llama / GPT-NeoX
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
