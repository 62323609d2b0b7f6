"""torch.amp.GradScaler for float16 training, unscaling before the global-norm clip.

float16 gradients underflow, so the loss is multiplied by a large scale before backward; the
gradients must be divided by it again (`unscale_`) before their norm is clipped, or the clip
would act on scaled values. Steps with inf/NaN gradients are skipped and the scale lowered.
With bfloat16 or float32 it is a pass-through (`enabled` follows `training.dtype`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from nanugpt.dist import total_norm
from nanugpt.errors import ConfigError, check_value


class AmpScaler(torch.amp.GradScaler):
    def __init__(
        self,
        device_type: str,
        float16: bool,
        enabled: bool | None,
        init_scale: float,
        growth_interval: int,
    ) -> None:
        check_value("scaler.enabled", enabled, bool, null="loss scaling exactly when training.dtype=float16")
        check_value("scaler.init_scale", init_scale, float, gt=0, fix="Set the first loss scale, e.g. 65536.")
        check_value(
            "scaler.growth_interval",
            growth_interval,
            int,
            ge=1,
            fix="Set how many overflow-free steps double the scale, e.g. 2000.",
        )
        if enabled is False and float16:
            raise ConfigError(
                "training.dtype=float16 needs loss scaling, or small gradients underflow to zero; "
                "use scaler=amp (or scaler=per_tensor_norm), or training.dtype=bfloat16."
            )
        # enabled=None: scale exactly when training in float16
        super().__init__(
            device_type,
            init_scale=init_scale,
            growth_interval=growth_interval,
            enabled=float16 if enabled is None else enabled,
        )

    def unscale_and_clip_(
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], max_norm: float
    ) -> torch.Tensor:
        """Unscale the gradients in place, clip their global norm to `max_norm` (0: no clip);
        returns the norm before clipping. Under FSDP the gradients are shards (DTensors): their
        norm is made whole over ranks before it is compared, as in torchtitan's clip."""
        self.unscale_(optimizer)
        params = list(params)
        norm = total_norm([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grads_with_norm_(params, max_norm if max_norm > 0 else math.inf, norm)
        return norm
