"""Per-tensor gradient normalisation: every parameter's gradient is rescaled to norm `max_norm`
(`training.grad_clip`), as in the speedrun line of work, instead of clipping the global norm.

Each tensor's step size then no longer depends on how large its raw gradient is, which keeps
layers with tiny gradients moving. Loss scaling for float16 works as in `scaler=amp`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nanugpt.dist import is_dtensor
from nanugpt.errors import ConfigError, check_value
from nanugpt.scalers.amp import AmpScaler


class PerTensorNormScaler(AmpScaler):
    def __init__(
        self,
        device_type: str,
        float16: bool,
        enabled: bool | None,
        init_scale: float,
        growth_interval: int,
        eps: float,
    ) -> None:
        check_value("scaler.eps", eps, float, gt=0, fix="Set a tiny positive number, e.g. 1e-12.")
        super().__init__(device_type, float16, enabled, init_scale, growth_interval)
        self.eps = eps

    @torch.no_grad()
    def unscale_and_clip_(
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], max_norm: float
    ) -> torch.Tensor:
        """Unscale, then set each gradient's norm to `max_norm`; returns the global norm before."""
        if max_norm <= 0:
            raise ConfigError(
                f"scaler=per_tensor_norm rescales every gradient to norm training.grad_clip, which is {max_norm}; set "
                "training.grad_clip > 0 (e.g. 1.0)."
            )
        self.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        # FSDP's gradients are shards (DTensors): each norm is made whole over ranks, and each
        # rank scales its own shard.
        norms = [n.full_tensor() if is_dtensor(n) else n for n in torch._foreach_norm(grads)]
        total = torch.linalg.vector_norm(torch.stack(norms))
        local = [g.to_local() if is_dtensor(g) else g for g in grads]
        torch._foreach_mul_(local, [max_norm / (n + self.eps) for n in norms])
        return total
