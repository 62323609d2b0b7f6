"""Sample from a checkpoint: `python -m nanugpt.generate ckpt=... 'prompt="def "' max_new_tokens=200`.

The checkpoint carries its resolved config, so the model and tokenizer are rebuilt from it
alone. A checkpoint is untrusted input: weights load with `weights_only=True`, and only
nanugpt's own `_target_`s are instantiated unless `trust_checkpoint=true`.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn as nn
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nanugpt.checkpoint import load_checkpoint, load_model_state
from nanugpt.config import register_configs, validate_generate
from nanugpt.dist import resolve_device
from nanugpt.errors import CheckpointError, ConfigError, UserError, report_user_errors
from nanugpt.sampling import generate
from nanugpt.tokenizers.base import Tokenizer, restore_tokenizer_state
from nanugpt.utils import CONF_DIR


def _targets(node: Any) -> list[str]:
    """Every `_target_` in a config tree (hydra instantiates nested ones too)."""
    if isinstance(node, dict):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


@functools.cache
def allowed_targets() -> frozenset[str]:
    """The `_target_`s of nanugpt's own model and tokenizer configs (nanugpt/conf/model, nanugpt/conf/tokenizer):
    the only code a checkpoint may make `generate` run. An exact list, not a `nanugpt.` prefix:
    hydra resolves `nanugpt.utils.os.system` to os.system."""
    conf = Path(CONF_DIR)
    return frozenset(
        t
        for group in ("model", "tokenizer")
        for path in sorted((conf / group).glob("*.yaml"))
        for t in _targets(yaml.safe_load(path.read_text()))
    )


def untrusted_targets(node: Any) -> list[str]:
    """Every `_target_` in a config tree that is not on nanugpt's allowlist."""
    return [t for t in _targets(node) if t not in allowed_targets()]


class UntrustedCheckpointError(UserError, PermissionError):
    """The checkpoint's config names code outside nanugpt."""


def build_from_checkpoint(
    ckpt: dict[str, Any], device: torch.device, trust: bool = False, source: Path | str = "the checkpoint"
) -> tuple[nn.Module, Tokenizer]:
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if (
        not isinstance(config, dict)
        or not all(isinstance(config.get(k), dict) for k in ("model", "tokenizer"))
        or "model" not in ckpt
    ):
        raise CheckpointError(
            f"{source} is not a nanugpt training checkpoint (it has no saved model config and weights); pass a .pt "
            "file that nanugpt.train wrote."
        )
    parts = {"model": config["model"], "tokenizer": config["tokenizer"]}
    bad = untrusted_targets(parts)
    if bad and not trust:
        raise UntrustedCheckpointError(
            f"The config in {source} names code that is not one of nanugpt's own models or tokenizers "
            f"({', '.join(bad)}); refusing to instantiate it, since a checkpoint is untrusted input. If you "
            "trust where this checkpoint came from, pass trust_checkpoint=true."
        )
    model = instantiate(OmegaConf.create(parts["model"]))
    load_model_state(model, ckpt["model"], Path(source), parts["model"], parts["model"])
    tokenizer = instantiate(OmegaConf.create(parts["tokenizer"]))
    restore_tokenizer_state(tokenizer, ckpt.get("data_meta") or {})  # a char vocab or trained BPE
    return model.to(device).eval(), tokenizer


def encode_prompt(tokenizer: Tokenizer, prompt: str, context_length: int) -> list[int]:
    try:
        ids = [int(i) for i in tokenizer.encode(prompt)]
    except Exception as err:
        raise ConfigError(
            f"The {getattr(tokenizer, 'name', type(tokenizer).__name__)} tokenizer cannot encode prompt={prompt!r} "
            f"({type(err).__name__}: {err}); use only characters from the training text, or a model trained "
            "with a tokenizer that covers them (e.g. tokenizer=byte)."
        ) from None
    vocab_size = getattr(tokenizer, "vocab_size", None)
    if vocab_size is not None and any(not 0 <= i < vocab_size for i in ids):
        raise ConfigError(
            f"The tokenizer encoded prompt={prompt!r} to ids outside its vocab of {vocab_size}; use only characters "
            "from the training text."
        )
    if not ids:
        raise ConfigError("prompt is empty after tokenization; pass a non-empty prompt, e.g. 'prompt=\"def \"'.")
    if len(ids) > context_length:
        raise ConfigError(
            f"The prompt is {len(ids)} tokens, longer than the model's context of {context_length}; "
            "shorten it (the model only sees its last context_length tokens)."
        )
    return ids


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text up to (and including) the first stop string, and whether one was found."""
    hits = [text.index(s) + len(s) for s in stop if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def generate_texts(
    model: nn.Module, tokenizer: Tokenizer, prompts: list[str], cfg: DictConfig, device: torch.device
) -> list[str]:
    """Every prompt x num_samples. Prompts of equal token length share one batch (one prefill,
    one cache); generation stops early once every row of a batch has hit a stop string."""
    stop = [str(s) for s in (cfg.stop or [])]
    encoded = [encode_prompt(tokenizer, p, model.context_length) for p in prompts]
    decode_step = torch.compile(model, dynamic=True) if cfg.compile else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    texts: list[str] = [""] * (len(prompts) * cfg.num_samples)
    # tokens/s and ETA on stderr (stdout stays the samples alone); cleared when done
    bar = tqdm(
        total=len(texts) * cfg.max_new_tokens,
        desc="generating",
        unit="tok",
        leave=False,
        file=sys.stderr,
        disable=not cfg.get("progress", False),
    )
    for length in sorted({len(ids) for ids in encoded}):
        rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(cfg.num_samples) if len(ids) == length]
        idx = torch.tensor([ids for _, ids in rows], dtype=torch.long, device=device)

        def after_token(idx: torch.Tensor, length: int = length) -> bool:
            bar.update(idx.size(0))
            return bool(stop) and all(cut_at_stop(tokenizer.decode(row[length:].tolist()), stop)[1] for row in idx)

        out = generate(
            model,
            idx,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_k,
            cfg.top_p,
            generator,
            use_cache=cfg.use_cache,
            window_keep=cfg.window_keep,
            should_stop=after_token,
            decode_step=decode_step,
        )
        seen: dict[int, int] = {}
        for (i, _), row in zip(rows, out, strict=True):
            new_text = cut_at_stop(tokenizer.decode(row[length:].tolist()), stop)[0]
            texts[i * cfg.num_samples + seen.get(i, 0)] = prompts[i] + new_text
            seen[i] = seen.get(i, 0) + 1
    bar.close()
    return texts


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
@report_user_errors
def main(cfg: DictConfig) -> list[str]:
    validate_generate(cfg)
    device = resolve_device(cfg.device, 0, "device")
    ckpt = load_checkpoint(Path(cfg.ckpt), map_location=device)
    model, tokenizer = build_from_checkpoint(ckpt, device, cfg.trust_checkpoint, source=cfg.ckpt)
    prompts = [str(p) for p in cfg.prompts] if cfg.prompts else [str(cfg.prompt)]
    texts = generate_texts(model, tokenizer, prompts, cfg, device)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"---------- sample {i + 1}/{len(texts)}")
        print(text)
    return texts


if __name__ == "__main__":
    main()
