"""Muon (torch.optim.Muon) on the hidden matrices, AdamW on everything else, as one optimizer.

Muon orthogonalises each momentum update with Newton-Schulz iterations (Jordan et al. 2024); it
is meant for the 2-D weights inside the network. Embeddings, the output head, norms and biases
are better served by AdamW (modded-nanogpt; Moonlight, Liu et al. 2025). Each of the four kinds
gets its own param group and lr; schedulers scale all of them by the same factor.

Momentum warmup (modded-nanogpt from record 2024-11-08, 300 steps from 2024-11-24; the reference
system's muon optimizer): Muon's step k (0-based) uses momentum (1 - f) momentum_start + f momentum
with f = min(k / momentum_warmup_steps, 1), e.g. 0.85 -> 0.95 over 300 steps. k is the number of
Muon steps taken, kept per parameter in the optimizer state (`step`, as Adam's), so a resumed run
continues the ramp; the group's `momentum` is set from it before each step.

torch.optim.Muon runs Newton-Schulz in bfloat16, which CPUs without native bf16 matmuls
(AVX2-only, no AVX512-BF16/AMX) emulate ~40x slower than float32 (66 vs 1.7 ms for one
512x128 matrix on a 2-core EPYC): `ns_dtype=auto` keeps bf16 on GPUs and uses float32 on CPUs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from nanugpt.dist import is_dtensor
from nanugpt.errors import CheckpointError, ConfigError, check_value
from nanugpt.optim.adamw import check_betas, check_decay_all, check_lr_and_decay

ADJUST_LR_FNS = ("original", "match_rms_adamw")


def muon_param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split parameters into `hidden` (≥2-D, for Muon), `embed`, `head`, `scalar` (for AdamW).

    Embeddings are the weights of nn.Embedding modules; the head is any linear layer with
    `model.vocab_size` outputs (a head tied to the embedding counts as embedding)."""
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "embed": [], "head": [], "scalar": []}
    seen: set[int] = set()

    def add(kind: str, p: nn.Parameter) -> None:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            groups[kind].append(p)

    for module in model.modules():
        if isinstance(module, nn.Embedding):
            add("embed", module.weight)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(weight, nn.Parameter)
            and weight.dim() == 2
            and model.vocab_size in (getattr(module, "out_features", None), getattr(module, "nf", None))
        ):
            add("head", weight)  # nf: transformers' Conv1D
    for p in model.parameters():
        add("hidden" if p.dim() >= 2 else "scalar", p)
    return groups


def run_closure(closure: Any) -> Any:
    """The optimizer-step closure protocol: re-evaluate the loss with grad on, if one is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def newton_schulz(
    update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, in `dtype` instead of bf16."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=eps))  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def orthogonalize(
    update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """`newton_schulz` of a whole matrix. Under FSDP the update is a DTensor holding this rank's
    rows: it is gathered (`full_tensor`), every rank orthogonalises the same full matrix, and keeps
    its own rows of the result, so the update equals single-process Muon's."""
    if not is_dtensor(update):
        return newton_schulz(update, coefficients, steps, eps, dtype)
    from torch.distributed.tensor import distribute_tensor

    full = newton_schulz(update.full_tensor(), coefficients, steps, eps, dtype)
    # src_data_rank=None: each rank cuts its shard from its own (identical) copy, no communication
    return distribute_tensor(full, update.device_mesh, update.placements, src_data_rank=None)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix lr: `original` (Keller Jordan) scales by sqrt(max(1, rows /
    cols)), `match_rms_adamw` (Moonlight) by 0.2 sqrt(max(rows, cols)) so AdamW's lr carries over."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    return lr * 0.2 * math.sqrt(max(rows, cols))


def warmed_up_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """The momentum of Muon step `step` (0-based): modded-nanogpt's ramp from `start` to `end`."""
    frac = min(max(step, 0) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return (1 - frac) * start + frac * end


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz precision as a choice and an optional momentum
    warmup: the same update, param groups and state (`momentum_buffer`, plus a `step` count), so
    checkpoints move freely between the two (one without `step` restarts the warmup). The step is
    written here on public API only (torch's helpers are private)."""

    def __init__(
        self,
        params: Any,
        ns_dtype: torch.dtype = torch.bfloat16,
        momentum_warmup_steps: int = 0,
        momentum_start: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            # `momentum` is the momentum of the next step; `momentum_end` the one the warmup reaches.
            end = group["momentum"]
            start = end if momentum_start is None else momentum_start
            group.update(momentum_start=start, momentum_end=end, momentum_warmup_steps=momentum_warmup_steps)
            group["momentum"] = warmed_up_momentum(0, start, end, momentum_warmup_steps)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved by torch.optim.Muon: no warmup
            group.setdefault("momentum_start", group["momentum"])
            group.setdefault("momentum_end", group["momentum"])
            group.setdefault("momentum_warmup_steps", 0)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            if group["momentum_warmup_steps"] > 0:
                taken = max((self.state.get(p, {}).get("step", 0) for p in group["params"]), default=0)
                group["momentum"] = warmed_up_momentum(
                    taken, group["momentum_start"], group["momentum_end"], group["momentum_warmup_steps"]
                )
            lr, momentum = float(group["lr"]), group["momentum"]
            # As torch's single-tensor Muon: the momentum buffer is created on a parameter's first
            # gradient, and parameters without a gradient are skipped.
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse or torch.is_complex(param):
                    raise RuntimeError("Muon supports neither sparse gradients nor complex parameters.")
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                state["step"] = state.get("step", 0) + 1
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> torch.dtype:
    check_value(
        "optim.ns_dtype",
        ns_dtype,
        str,
        choices=("auto", "bfloat16", "float32"),
        fix="auto picks bf16 on GPUs and float32 on CPUs.",
    )
    if ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, ns_dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers behind one Optimizer, so LR schedulers, the grad scaler and checkpoints see
    a single object. `param_groups` are the inner optimizers' own group dicts (Muon's first), so
    a scheduler's lr changes reach them; `state_dict()` is `{"muon": ..., "adamw": ...}`."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        self.parts = (muon, adamw)  # what torch.distributed.checkpoint.state_dict loads and saves
        super().__init__([p for opt in (muon, adamw) for g in opt.param_groups for p in g["params"]], {})
        self.link_groups()

    def link_groups(self) -> None:
        """Share the inner optimizers' group dicts; again after anything replaced them (a load)."""
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = run_closure(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise CheckpointError(
                f"This optimizer state has keys {sorted(state_dict)}, not a muon checkpoint's ['adamw', 'muon']; "
                "resume with the optim= the checkpoint was trained with, or start a fresh run (resume=never)."
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.link_groups()  # loading replaces the inner group dicts


def muon(
    model: nn.Module,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    ns_steps: int,
    adjust_lr_fn: str,
    embed_lr: float,
    head_lr: float,
    scalar_lr: float,
    adamw_betas: tuple[float, float],
    adamw_weight_decay: float,
    adamw_eps: float,
    ns_dtype: str,
    momentum_warmup_steps: int,
    momentum_start: float,
    decay_all: bool,
) -> MuonWithAdamW:
    check_lr_and_decay(lr, weight_decay)
    check_value("optim.momentum", momentum, float, ge=0, lt=1, fix="Set Muon's momentum, e.g. 0.95.")
    check_value("optim.nesterov", nesterov, bool)
    check_value(
        "optim.momentum_warmup_steps",
        momentum_warmup_steps,
        int,
        ge=0,
        fix="Set the Muon steps over which momentum rises from optim.momentum_start to optim.momentum, 0 for none "
        "(modded-nanogpt: 300).",
    )
    check_value(
        "optim.momentum_start", momentum_start, float, ge=0, lt=1, fix="Set the warmup's first momentum, e.g. 0.85."
    )
    check_decay_all(decay_all)
    check_value("optim.ns_steps", ns_steps, int, ge=1, le=99, fix="Set the Newton-Schulz iterations, e.g. 5.")
    check_value(
        "optim.adjust_lr_fn",
        adjust_lr_fn,
        str,
        choices=ADJUST_LR_FNS,
        fix="original is Keller Jordan's lr scale; match_rms_adamw (Moonlight) reuses AdamW's lr and decay.",
    )
    for key, kind_lr in (("embed_lr", embed_lr), ("head_lr", head_lr), ("scalar_lr", scalar_lr)):
        check_value(f"optim.{key}", kind_lr, float, gt=0, fix="Set AdamW's lr for that kind, e.g. 5e-3.")
    check_betas("optim.adamw_betas", adamw_betas)
    check_value(
        "optim.adamw_weight_decay", adamw_weight_decay, float, ge=0, fix="Set 0 for no weight decay, or e.g. 0.1."
    )
    check_value("optim.adamw_eps", adamw_eps, float, gt=0, fix="Set a small positive number, e.g. 1e-8.")
    groups = muon_param_groups(model)
    if not groups["hidden"]:
        raise ConfigError(f"optim=muon found no hidden ≥2-D weights in {type(model).__name__}; use optim=adamw for it.")
    muon_opt = Muon(
        groups["hidden"],
        ns_dtype=resolve_ns_dtype(ns_dtype, groups["hidden"][0].device),
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        ns_steps=ns_steps,
        adjust_lr_fn=adjust_lr_fn,
        momentum_warmup_steps=momentum_warmup_steps,
        momentum_start=momentum_start,
    )
    adamw_groups = [
        {
            "params": groups[kind],
            "lr": kind_lr,
            "name": kind,
            "weight_decay": 0.0 if kind == "scalar" and not decay_all else adamw_weight_decay,
        }
        for kind, kind_lr in (("embed", embed_lr), ("head", head_lr), ("scalar", scalar_lr))
        if groups[kind]
    ]
    adamw_opt = torch.optim.AdamW(adamw_groups, betas=tuple(adamw_betas), eps=adamw_eps)
    muon_opt.param_groups[0]["name"] = "hidden"
    return MuonWithAdamW(muon_opt, adamw_opt)
