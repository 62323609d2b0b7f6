"""`build_data(cfg, spec)`: the one way the trainer and `nanugpt.bench` get their data.

Three kinds of `data=` plugin feed it:

- example data (`examples.ExampleSource`: grokking, arithmetic): rows encoded with the
  configured tokenizer, answer-only targets;
- pre-tokenized shard files (`shards.ShardFiles`: llm.c, modded-nanogpt, nanoGPT), read in place;
- text corpora (`source.TokenSource`: text, pystdlib, shakespeare_char, the hub data sets),
  tokenized once into the prepared cache (`prepared.prepare`).

The last two are token streams (`contract.TokenSplits`, `load_tokens`, which `nanugpt.prepare`
calls too) and share one random-window loader.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanugpt.data.contract import BatchSpec, Data, TokenSplits
from nanugpt.data.examples import ExampleSource, example_data
from nanugpt.data.loader import RandomWindowBatches, TokenWindows, fixed_eval_batches
from nanugpt.data.prepared import prepare
from nanugpt.data.shards import ShardFiles

log = logging.getLogger(__name__)


def build_data(cfg: DictConfig, spec: BatchSpec) -> Data:
    """Train batches, fixed val (and test) batches, vocab size and metadata for `cfg.data`."""
    source = instantiate(cfg.data)
    if isinstance(source, ExampleSource):
        data = example_data(source, instantiate(cfg.tokenizer), spec)
        if not cfg.eval.test_iters:
            data.test = None
        return data
    return token_stream_data(load_tokens(cfg, source), spec, cfg.eval.iters, cfg.eval.test_iters)


def load_tokens(cfg: DictConfig, source: Any, force: bool = False) -> TokenSplits:
    """A token-stream source's splits, memory-mapped: shard files as they are, a text corpus
    from the prepared cache (tokenized first if it is not there, or again with `force`)."""
    if isinstance(source, ShardFiles):
        return source.load()
    return prepare(
        source=source,
        tokenizer=instantiate(cfg.tokenizer),
        data_dir=cfg.paths.data_dir,
        data_cfg=OmegaConf.to_container(cfg.data, resolve=True),
        tokenizer_cfg=OmegaConf.to_container(cfg.tokenizer, resolve=True),
        force=force,
    )


def token_stream_data(tokens: TokenSplits, spec: BatchSpec, eval_iters: int, test_iters: int = 0) -> Data:
    log.info(
        "data %s: %s | vocab %d",
        tokens.meta.get("source", "?"),
        ", ".join(
            f"{split} {sum(len(s) for s in shards):,} tokens" + (f" in {len(shards)} shards" if len(shards) > 1 else "")
            for split, shards in tokens.splits.items()
        ),
        tokens.vocab_size,
    )

    def windows(split: str) -> TokenWindows:
        return TokenWindows(tokens.splits[split], spec.context_length, split, tokens.vocab_size, tokens.repair_hint)

    has_test = "test" in tokens.splits and test_iters > 0
    return Data(
        RandomWindowBatches(windows("train"), spec),
        fixed_eval_batches(windows("val"), spec, eval_iters),
        fixed_eval_batches(windows("test"), spec, test_iters) if has_test else None,
        tokens.vocab_size,
        tokens.meta,
    )
