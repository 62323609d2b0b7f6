"""Muon (torch.optim.Muon) on the hidden matrices, AdamW on everything else, as one optimizer.

Muon orthogonalises each momentum update with Newton-Schulz iterations (Jordan et al. 2024); it
is meant for the 2-D weights inside the network. Embeddings, the output head, norms and biases
are better served by AdamW (modded-nanogpt; Moonlight, Liu et al. 2025). Each of the four kinds
gets its own param group and lr; schedulers scale all of them by the same factor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


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
        if isinstance(weight, nn.Parameter) and weight.dim() == 2 and model.vocab_size in (getattr(module, "out_features", None), getattr(module, "nf", None)):
            add("head", weight)  # nf: transformers' Conv1D
    for p in model.parameters():
        add("hidden" if p.dim() >= 2 else "scalar", p)
    return groups


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers behind one Optimizer, so LR schedulers, the grad scaler and checkpoints see
    a single object. `param_groups` are the inner optimizers' own group dicts (Muon's first), so
    a scheduler's lr changes reach them; `state_dict()` is `{"muon": ..., "adamw": ...}`."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([p for opt in (muon, adamw) for g in opt.param_groups for p in g["params"]], {})
        self._link_groups()

    def _link_groups(self) -> None:
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
) -> MuonWithAdamW:
    groups = muon_param_groups(model)
    if not groups["hidden"]:
        raise ValueError(f"optim=muon found no hidden ≥2-D weights in {type(model).__name__}; use optim=adamw for it.")
    muon_opt = torch.optim.Muon(
        groups["hidden"], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
    )  # fmt: skip
    adamw_groups = [
        {"params": groups[kind], "lr": kind_lr, "name": kind, "weight_decay": 0.0 if kind == "scalar" else adamw_weight_decay}
        for kind, kind_lr in (("embed", embed_lr), ("head", head_lr), ("scalar", scalar_lr))
        if groups[kind]
    ]
    adamw_opt = torch.optim.AdamW(adamw_groups, betas=tuple(adamw_betas), eps=adamw_eps)
    muon_opt.param_groups[0]["name"] = "hidden"
    return MuonWithAdamW(muon_opt, adamw_opt)
