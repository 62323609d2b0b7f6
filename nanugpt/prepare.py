"""Tokenize a corpus into the prepared-data cache: `python -m nanugpt.prepare data=... tokenizer=...`.

Training does this automatically when the files are missing; run it yourself to prepare once
before a sweep, or with `force=true` to rebuild.
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanugpt.config import register_configs, validate_prepare
from nanugpt.data.prepared import prepare
from nanugpt.errors import report_user_errors
from nanugpt.utils import CONF_DIR

log = logging.getLogger("nanugpt.prepare")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
@report_user_errors
def main(cfg: DictConfig) -> str:
    validate_prepare(cfg)
    data = prepare(
        source=instantiate(cfg.data),
        tokenizer=instantiate(cfg.tokenizer),
        data_dir=cfg.paths.data_dir,
        data_cfg=OmegaConf.to_container(cfg.data, resolve=True),
        tokenizer_cfg=OmegaConf.to_container(cfg.tokenizer, resolve=True),
        force=cfg.force,
    )
    tokens = data.meta["num_tokens"]
    log.info(
        "%s: train %s tokens, val %s tokens, vocab %d",
        data.path,
        f"{tokens['train']:,}",
        f"{tokens['val']:,}",
        data.vocab_size,
    )
    return str(data.path)


if __name__ == "__main__":
    main()
