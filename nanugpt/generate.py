"""Sample from a checkpoint: `python -m nanugpt.generate ckpt=... 'prompt="def "' max_new_tokens=200`.

The checkpoint carries its resolved config, so the model and tokenizer are rebuilt from it
alone. A checkpoint is untrusted input: weights load with `weights_only=True`, and only
nanugpt's own `_target_`s are instantiated unless `trust_checkpoint=true`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanugpt.checkpoint import clean_state_dict, load_checkpoint
from nanugpt.dist import resolve_device
from nanugpt.sampling import generate
from nanugpt.tokenizers.base import Tokenizer, restore_tokenizer_state
from nanugpt.utils import CONF_DIR

ALLOWED_TARGET_PREFIX = "nanugpt."


def untrusted_targets(node: Any) -> list[str]:
    """Every `_target_` in a config tree that does not name nanugpt's own code."""
    if isinstance(node, dict):
        found = [str(node["_target_"])] if "_target_" in node and not str(node["_target_"]).startswith(ALLOWED_TARGET_PREFIX) else []
        return found + [t for v in node.values() for t in untrusted_targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in untrusted_targets(v)]
    return []


def build_from_checkpoint(ckpt: dict[str, Any], device: torch.device, trust: bool = False) -> tuple[nn.Module, Tokenizer]:
    config = ckpt["config"]
    parts = {"model": config["model"], "tokenizer": config["tokenizer"]}
    bad = untrusted_targets(parts)
    if bad and not trust:
        raise PermissionError(
            f"The checkpoint's config names code outside nanugpt ({', '.join(bad)}); refusing to "
            "instantiate it. If you trust where this checkpoint came from, pass trust_checkpoint=true."
        )
    model = instantiate(OmegaConf.create(parts["model"]))
    model.load_state_dict(clean_state_dict(ckpt["model"]))
    tokenizer = instantiate(OmegaConf.create(parts["tokenizer"]))
    restore_tokenizer_state(tokenizer, ckpt.get("data_meta") or {})  # a char vocab or trained BPE
    return model.to(device).eval(), tokenizer


def encode_prompt(tokenizer: Tokenizer, prompt: str, context_length: int) -> list[int]:
    ids = [int(i) for i in tokenizer.encode(prompt)]
    if not ids:
        raise ValueError("prompt is empty after tokenization; pass a non-empty prompt, e.g. 'prompt=\"def \"'.")
    if len(ids) > context_length:
        raise ValueError(
            f"The prompt is {len(ids)} tokens, longer than the model's context of {context_length}; "
            "shorten it (the model only sees its last context_length tokens)."
        )
    return ids


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> list[str]:
    device = resolve_device(cfg.device, 0)
    ckpt = load_checkpoint(Path(cfg.ckpt), map_location=device)
    model, tokenizer = build_from_checkpoint(ckpt, device, cfg.trust_checkpoint)
    ids = encode_prompt(tokenizer, str(cfg.prompt), model.context_length)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    out = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator)
    texts = [tokenizer.decode(row.tolist()) for row in out]
    for i, text in enumerate(texts):
        if cfg.num_samples > 1:
            print(f"---------- sample {i + 1}/{cfg.num_samples}")
        print(text)
    return texts


if __name__ == "__main__":
    main()
