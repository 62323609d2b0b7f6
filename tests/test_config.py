import inspect
import re

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from nanugpt.errors import ConfigError, find_user_error

from .conftest import build_model, compose_train, options

GROUPS = ["model", "data", "tokenizer", "optim", "sched", "loss", "scaler"]
# The plugin groups whose constructors take every value from their YAML.
YAML_DEFAULTS = ["optim", "sched", "loss", "scaler"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    needs_path = group == "data" and option in ("text", "shards")  # data.path: ??? (the user's files)
    overrides = [f"{group}={option}"] + (["data.path=/tmp/x"] if needs_path else [])
    cfg = compose_train(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert "_target_" in cfg[group] and cfg[group]._target_.startswith("nanugpt.")


@pytest.mark.parametrize("group,option", [(g, o) for g in YAML_DEFAULTS for o in options(g)])
def test_each_default_lives_in_the_yaml_alone(group, option):
    """A constructor default for a key the YAML sets is a second place for it, which drifts (a
    schedule once said warmup 100 where its YAML said 50): the constructors have none."""
    cfg = OmegaConf.to_container(compose_train([f"{group}={option}"])[group])
    params = inspect.signature(get_object(cfg.pop("_target_"))).parameters
    cfg.pop("_partial_", None)
    assert set(cfg) <= set(params), f"{group}={option} sets keys its constructor does not take"
    doubled = [k for k in cfg if params[k].default is not inspect.Parameter.empty]
    assert doubled == [], f"{group}={option}: constructor defaults for {doubled}, which the YAML sets"


def build(group: str, overrides: list[str]):
    """Build the group's plugin as train.py does, with a tiny model and optimizer where needed."""
    cfg = compose_train(overrides)
    made = instantiate(cfg[group])
    if group == "optim":
        return made(build_model("gpt_tiny", vocab_size=16, context_length=8, n_layer=1, n_head=2, n_embd=16))
    if group == "sched":
        return made(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3))
    if group == "scaler":
        return made("cpu", float16=False)
    return made


@pytest.mark.parametrize(
    "group,overrides,message",
    [
        ("optim", ["optim.lr=0"], "optim.lr=0 must be a number > 0"),
        ("optim", ["optim.lr=-3e-4"], "optim.lr=-0.0003 must be"),
        ("optim", ["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must be a number >= 0"),
        ("optim", ["optim.betas=[0.9,1.0]"], r"optim.betas\[1\]=1.0 must be a number in \[0, 1\)"),
        ("optim", ["optim.betas=[0.9]"], r"optim.betas=\[0.9\] must be two numbers"),
        ("optim", ["optim.eps=0"], "optim.eps=0 must be a number > 0"),
        ("optim", ["optim.fused=maybe"], "optim.fused='maybe'"),
        ("optim", ["optim=adamw_nanogpt", "optim.lr=abc"], "optim.lr='abc' must be a number"),
        ("optim", ["optim=sgd", "optim.momentum=1.0"], r"optim.momentum=1.0 must be a number in \[0, 1\)"),
        ("optim", ["optim=sgd", "optim.lr=0"], "optim.lr=0"),
        ("optim", ["optim=muon", "optim.lr=0"], "optim.lr=0"),
        ("optim", ["optim=muon", "optim.momentum=-0.5"], "optim.momentum=-0.5"),
        ("optim", ["optim=muon", "optim.ns_steps=0"], "optim.ns_steps=0 must be an integer in"),
        ("optim", ["optim=muon", "optim.adjust_lr_fn=rms"], "optim.adjust_lr_fn='rms' is not one of original"),
        ("optim", ["optim=muon", "optim.head_lr=0"], "optim.head_lr=0"),
        ("optim", ["optim=muon", "optim.adamw_betas=[1.5,0.9]"], r"optim.adamw_betas\[0\]=1.5"),
        ("optim", ["optim=muon", "optim.adamw_weight_decay=-1"], "optim.adamw_weight_decay=-1"),
        ("optim", ["optim=muon", "optim.adamw_eps=0"], "optim.adamw_eps=0"),
        ("optim", ["optim=muon", "optim.ns_dtype=fp8"], "optim.ns_dtype='fp8' is not one of auto"),
        ("sched", ["sched.warmup_steps=-1"], "sched.warmup_steps=-1 must be an integer >= 0"),
        ("sched", ["sched.warmup_steps=2.5"], "sched.warmup_steps=2.5 must be an integer"),
        ("sched", ["sched.min_lr_ratio=1.5"], r"sched.min_lr_ratio=1.5 must be a number in \[0, 1\]"),
        ("sched", ["training.max_steps=0"], "sched.max_steps=0 must be an integer >= 1"),
        ("sched", ["sched=wsd", "sched.decay_shape=cube"], "sched.decay_shape='cube' is not one of linear"),
        ("sched", ["sched=wsd", "sched.decay_fraction=1.2"], r"sched.decay_fraction=1.2 must be a number in \[0, 1\]"),
        ("sched", ["sched=wsd", "training.max_steps=100", "sched.warmup_steps=90"], "warmup_steps=90 does not fit"),
        ("sched", ["sched=lr_range_test", "sched.min_lr=0"], "sched.min_lr=0 must be a number > 0"),
        ("sched", ["sched=lr_range_test", "sched.max_lr=1e-6"], "sched.max_lr=1e-06 must be a number > 1e-05"),
        ("scaler", ["scaler.init_scale=0"], "scaler.init_scale=0 must be a number > 0"),
        ("scaler", ["scaler.growth_interval=0"], "scaler.growth_interval=0 must be an integer >= 1"),
        ("scaler", ["scaler.enabled=sometimes"], "scaler.enabled='sometimes' is not one of null"),
        ("scaler", ["scaler=per_tensor_norm", "scaler.eps=0"], "scaler.eps=0 must be a number > 0"),
        ("loss", ["loss.ignore_index=0"], "loss.ignore_index=0 must be an integer < 0"),
        ("loss", ["loss=arithmetic", "loss.ignore_index=null"], "loss.ignore_index=None must be an integer < 0"),
    ],
)
def test_bad_plugin_values_are_one_paragraph_config_errors(group, overrides, message):
    """Each constructor checks its arguments before any work, naming the key and the fix."""
    with pytest.raises(Exception) as info:
        build(group, overrides)
    err = find_user_error(info.value)  # instantiate wraps a loss's error, as train.py's CLI unwraps it
    assert isinstance(err, ConfigError), info.value
    text = str(err)
    assert "\n" not in text and len(text.split(". ")) >= 2, text  # one paragraph: the problem, then the fix
    assert re.search(message, text), text


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
