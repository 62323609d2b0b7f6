"""Muon (torch.optim.Muon) on the hidden matrices, AdamW on everything else, as one optimizer.

Muon orthogonalises each momentum update with Newton-Schulz iterations (Jordan et al. 2024); it
is meant for the 2-D weights inside the network. Embeddings, the output head, norms and biases
are better served by AdamW (modded-nanogpt; Moonlight, Liu et al. 2025). Each of the four kinds
gets its own param group and lr; schedulers scale all of them by the same factor.

torch.optim.Muon runs Newton-Schulz in bfloat16, which CPUs without native bf16 matmuls
(AVX2-only, no AVX512-BF16/AMX) emulate ~40x slower than float32 (66 vs 1.7 ms for one
512x128 matrix on a 2-core EPYC): `ns_dtype=auto` keeps bf16 on GPUs and uses float32 on CPUs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.optim._muon import _adjust_lr


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


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz precision as a choice: the same update, param
    groups and state (`momentum_buffer`), so checkpoints move freely between the two."""

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, momentum = float(group["lr"]), group["momentum"]
            for param, grad, buf in zip(params, grads, bufs, strict=False):  # as torch's _single_tensor_muon
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> torch.dtype:
    if ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if ns_dtype not in ("bfloat16", "float32"):
        raise ValueError(
            f"optim.ns_dtype={ns_dtype} is not one of auto, bfloat16, float32; auto picks bf16 on GPUs and float32 on "
            "CPUs."
        )
    return getattr(torch, ns_dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers behind one Optimizer, so LR schedulers, the grad scaler and checkpoints see
    a single object. `param_groups` are the inner optimizers' own group dicts (Muon's first), so
    a scheduler's lr changes reach them; `state_dict()` is `{"muon": ..., "adamw": ...}`."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([p for opt in (muon, adamw) for g in opt.param_groups for p in g["params"]], {})
        self._link_groups()

    def _link_groups(self) -> None:
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
            raise ValueError(
                f"This optimizer state has keys {sorted(state_dict)}, not a muon checkpoint's ['adamw', 'muon']; "
                "resume with the optim= the checkpoint was trained with, or start a fresh run (resume=never)."
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._link_groups()  # loading replaces the inner group dicts


def muon(
    model: nn.Module,
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = "original",
    embed_lr: float = 5e-3,
    head_lr: float = 5e-3,
    scalar_lr: float = 5e-3,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_weight_decay: float = 0.0,
    adamw_eps: float = 1e-8,
    ns_dtype: str = "auto",
) -> MuonWithAdamW:
    groups = muon_param_groups(model)
    if not groups["hidden"]:
        raise ValueError(f"optim=muon found no hidden ≥2-D weights in {type(model).__name__}; use optim=adamw for it.")
    muon_opt = Muon(
        groups["hidden"],
        ns_dtype=resolve_ns_dtype(ns_dtype, groups["hidden"][0].device),
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        ns_steps=ns_steps,
        adjust_lr_fn=adjust_lr_fn,
    )
    adamw_groups = [
        {
            "params": groups[kind],
            "lr": kind_lr,
            "name": kind,
            "weight_decay": 0.0 if kind == "scalar" else adamw_weight_decay,
        }
        for kind, kind_lr in (("embed", embed_lr), ("head", head_lr), ("scalar", scalar_lr))
        if groups[kind]
    ]
    adamw_opt = torch.optim.AdamW(adamw_groups, betas=tuple(adamw_betas), eps=adamw_eps)
    muon_opt.param_groups[0]["name"] = "hidden"
    return MuonWithAdamW(muon_opt, adamw_opt)
