"""Sample from a checkpoint: `python -m nanugpt.generate ckpt=... 'prompt="def "' max_new_tokens=200`.

The checkpoint carries its resolved config, so the model and tokenizer are rebuilt from it
alone. A checkpoint is untrusted input: weights load with `weights_only=True`, and only
nanugpt's own `_target_`s are instantiated unless `trust_checkpoint=true`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra
import torch
import torch.nn as nn
import yaml
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nanugpt.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint
from nanugpt.config import GenerateConfig, check_sampling_options, register_configs, validate_generate
from nanugpt.dist import resolve_device
from nanugpt.errors import CheckpointError, ConfigError, UserError, report_user_errors
from nanugpt.sampling import generate
from nanugpt.tokenizers.base import Tokenizer, restore_tokenizer_state
from nanugpt.utils import CONF_DIR


@functools.cache
def allowed_targets() -> frozenset[str]:
    """The `_target_`s of nanugpt's own model and tokenizer configs (nanugpt/conf/model, nanugpt/conf/tokenizer):
    the only code a checkpoint may make `generate` run. An exact list, not a `nanugpt.` prefix:
    hydra resolves `nanugpt.utils.os.system` to os.system."""
    conf = Path(CONF_DIR)
    return frozenset(
        yaml.safe_load(path.read_text())["_target_"]
        for group in ("model", "tokenizer")
        for path in sorted((conf / group).glob("*.yaml"))
    )


class UntrustedCheckpointError(UserError, PermissionError):
    """The checkpoint's config names code outside nanugpt."""


PLAIN_TYPES = (str, int, float, bool, type(None))


def untrusted_parts(cfg: dict[str, Any]) -> list[str]:
    """What in one saved model/tokenizer config is more than plain data: interpolations (a value
    like `${oc.create:...}` becomes a config node, `_target_` and all, when resolved), nested
    configs, instantiate options (`_args_`, `_recursive_`, ...) and non-plain values."""
    found = []
    for key, value in cfg.items():
        values = value if isinstance(value, list) else [value]
        if not isinstance(key, str) or (key.startswith("_") and key != "_target_"):
            found.append(f"the key {key!r}")
        elif not all(isinstance(v, PLAIN_TYPES) for v in values):
            found.append(f"{key}: a nested {type(value).__name__}")
        elif any(isinstance(v, str) and "${" in v for v in values):
            found.append(f"{key}: the interpolation {value!r}")
    return found


def build_plain(cfg: dict[str, Any], source: Path | str, trust: bool) -> Any:
    """Build one object from a checkpoint's saved config. Untrusted (the default): only a class on
    nanugpt's allowlist, called with plain values, and no interpolation is ever resolved. With
    `trust`: Hydra's instantiate, for the user's own custom models and tokenizers."""
    if trust:
        return instantiate(OmegaConf.create(cfg))
    target = cfg.get("_target_")
    problems = untrusted_parts(cfg)
    if target not in allowed_targets():
        problems.insert(0, f"the _target_ {target!r}, which is not one of nanugpt's own models or tokenizers")
    if problems:
        raise UntrustedCheckpointError(
            f"The config in {source} is not plain nanugpt data ({'; '.join(problems)}); refusing to build anything "
            "from it, since a checkpoint is untrusted input. If you trust where this checkpoint came from (your own "
            "run with a custom model), pass trust_checkpoint=true."
        )
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    return get_object(target)(**kwargs)


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
            f"{source} is not a nanugpt training checkpoint (it has no saved model config and weights); "
            "pass a .pt file that nanugpt.train wrote."
        )
    model = build_plain(config["model"], source, trust)
    load_model_state(model, ckpt["model"], Path(source), config["model"], config["model"])
    tokenizer = build_plain(config["tokenizer"], source, trust)
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


def sampling_defaults() -> dict[str, Any]:
    """The sampling options and their defaults: the keys of `python -m nanugpt.generate` (their one
    place is GenerateConfig in nanugpt/config.py) other than what to load and where."""
    return {f.name: getattr(GenerateConfig(), f.name) for f in fields(GenerateConfig) if f.name not in NOT_SAMPLING}


NOT_SAMPLING = {"ckpt", "prompt", "prompts", "device", "trust_checkpoint"}


class Sampler:
    """A model and tokenizer loaded once from a checkpoint, to sample from many times (notebooks,
    scripts); `python -m nanugpt.generate` is a thin CLI over it.

        from nanugpt.generate import Sampler
        sampler = Sampler.load("outputs/2026-11-27/10-00-00")         # a run dir, checkpoints dir or .pt file
        sampler("def ", max_new_tokens=100, temperature=0.8)            # -> one str
        sampler(["def ", "class "], num_samples=2, stop=["\n\n"])       # -> 4 str: each prompt x num_samples

    Options, their defaults and allowed ranges are those of `python -m nanugpt.generate`
    (GenerateConfig in nanugpt/config.py); a value out of range is the same ConfigError.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.defaults = sampling_defaults()

    @classmethod
    def load(cls, ckpt: str | Path, device: str = "auto", trust_checkpoint: bool = False) -> Sampler:
        path = resolve_checkpoint(ckpt)
        torch_device = resolve_device(device, 0, "device")
        state = load_checkpoint(path, map_location=torch_device)
        model, tokenizer = build_from_checkpoint(state, torch_device, trust_checkpoint, source=path)
        sampler = cls(model, tokenizer, torch_device)
        sampler.path, sampler.step = path, state.get("step")
        return sampler

    def __call__(self, prompt: str | Sequence[str], **options: Any) -> str | list[str]:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"Unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(sorted(self.defaults))}."
            )
        opts = {**self.defaults, **options}
        check_sampling_options(opts)
        opts = SimpleNamespace(**opts)
        prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
        texts = generate_texts(self.model, self.tokenizer, prompts, opts, self.device)
        return texts[0] if isinstance(prompt, str) and opts.num_samples == 1 else texts


def generate_texts(
    model: nn.Module, tokenizer: Tokenizer, prompts: list[str], opts: Any, device: torch.device
) -> list[str]:
    """Every prompt x opts.num_samples. Prompts of equal token length share one batch (one prefill,
    one cache); generation stops early once every row of a batch has hit a stop string."""
    stop = [str(s) for s in (opts.stop or [])]
    encoded = [encode_prompt(tokenizer, p, model.context_length) for p in prompts]
    decode_step = torch.compile(model, dynamic=True) if opts.compile else None
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    texts: list[str] = [""] * (len(prompts) * opts.num_samples)
    # tokens/s and ETA on stderr (stdout stays the samples alone); cleared when done
    bar = tqdm(
        total=len(texts) * opts.max_new_tokens,
        desc="generating",
        unit="tok",
        leave=False,
        file=sys.stderr,
        disable=not opts.progress,
    )
    for length in sorted({len(ids) for ids in encoded}):
        rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(opts.num_samples) if len(ids) == length]
        idx = torch.tensor([ids for _, ids in rows], dtype=torch.long, device=device)

        def after_token(idx: torch.Tensor, length: int = length) -> bool:
            bar.update(idx.size(0))
            return bool(stop) and all(cut_at_stop(tokenizer.decode(row[length:].tolist()), stop)[1] for row in idx)

        out = generate(
            model,
            idx,
            opts.max_new_tokens,
            opts.temperature,
            opts.top_k,
            opts.top_p,
            generator,
            use_cache=opts.use_cache,
            window_keep=opts.window_keep,
            should_stop=after_token,
            decode_step=decode_step,
        )
        seen: dict[int, int] = {}
        for (i, _), row in zip(rows, out, strict=True):
            new_text = cut_at_stop(tokenizer.decode(row[length:].tolist()), stop)[0]
            texts[i * opts.num_samples + seen.get(i, 0)] = prompts[i] + new_text
            seen[i] = seen.get(i, 0) + 1
    bar.close()
    return texts


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
@report_user_errors
def main(cfg: DictConfig) -> list[str]:
    validate_generate(cfg)
    sampler = Sampler.load(cfg.ckpt, str(cfg.device), cfg.trust_checkpoint)
    prompts = [str(p) for p in cfg.prompts] if cfg.prompts else [str(cfg.prompt)]
    options = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in NOT_SAMPLING}
    texts = sampler(prompts, **options)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"---------- sample {i + 1}/{len(texts)}")
        print(text)
    return texts


if __name__ == "__main__":
    main()
