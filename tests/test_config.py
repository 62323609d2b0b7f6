from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nanugpt.utils import CONF_DIR

from .conftest import compose_train

GROUPS = ["model", "data", "tokenizer", "optim", "sched", "loss", "scaler"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    needs_path = group == "data" and option in ("text", "shards")  # data.path: ??? (the user's files)
    overrides = [f"{group}={option}"] + (["data.path=/tmp/x"] if needs_path else [])
    cfg = compose_train(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert "_target_" in cfg[group] and cfg[group]._target_.startswith("nanugpt.")


def test_shared_values_flow_through_interpolation():
    cfg = compose_train(["training.max_steps=123"])
    assert cfg.sched.max_steps == 123


def test_overrides_keep_their_types():
    cfg = compose_train(["optim.lr=3e-4", "training.max_steps=7", "training.compile=true"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.training.max_steps == 7 and cfg.training.compile is True


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.max_stpes=5", "max_stpes"),
        ("training.max_steps=abc", "max_steps"),
        ("model=gpt2_125m", "gpt2_125m"),
        ("model.n_layr=3", "n_layr"),
    ],
)
def test_bad_overrides_fail_at_composition_with_the_bad_name(override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose_train([override])
