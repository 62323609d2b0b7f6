"""Tokenize a corpus into the prepared-data cache: `python -m nanugpt.prepare data=... tokenizer=...`.

Training does this automatically when the files are missing (through the same
`nanugpt.data.build.load_tokens`); run it yourself to prepare once before a sweep, or with
`force=true` to rebuild. For `data=shards` it checks every shard's header and length.
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from nanugpt.config import register_configs, validate_prepare
from nanugpt.data.build import load_tokens
from nanugpt.data.examples import ExampleSource
from nanugpt.errors import report_user_errors
from nanugpt.utils import CONF_DIR

log = logging.getLogger("nanugpt.prepare")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
@report_user_errors
def main(cfg: DictConfig) -> str:
    validate_prepare(cfg)
    source = instantiate(cfg.data)
    if isinstance(source, ExampleSource):
        log.info("data=%s generates its examples when training starts: there is nothing to prepare.", source.name)
        return ""
    data = load_tokens(cfg, source, force=cfg.force)
    tokens = data.meta["num_tokens"]
    log.info(
        "%s: %s, vocab %d",
        data.path,
        ", ".join(f"{split} {n:,} tokens" for split, n in tokens.items()),
        data.vocab_size,
    )
    return str(data.path)


if __name__ == "__main__":
    main()
