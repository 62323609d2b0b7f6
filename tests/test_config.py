import copy
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object, instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from nanugpt.config import (
    GenerateConfig,
    PathsConfig,
    PrepareConfig,
    TrainConfig,
    check_train_environment,
    register_configs,
    validate_generate,
    validate_prepare,
    validate_train,
)
from nanugpt.errors import find_user_error
from nanugpt.train import check_model_optimizer_schedule
from nanugpt.utils import CONF_DIR

from .conftest import compose_train, options

GROUPS = ["model", "data", "tokenizer", "optim", "sched", "loss", "scaler"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    needs_path = group == "data" and option in ("text", "shards")  # data.path: ??? (the user's files)
    overrides = [f"{group}={option}"] + (["data.path=/tmp/x"] if needs_path else [])
    cfg = compose_train(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert "_target_" in cfg[group] and cfg[group]._target_.startswith("nanugpt.")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_each_default_lives_in_the_yaml_alone(group, option):
    """A constructor default for a key the YAML sets is a second place for it, which drifts (a
    schedule once said warmup 100 where its YAML said 50): the constructors have none."""
    cfg = OmegaConf.to_container(compose_train([f"{group}={option}"])[group])
    params = inspect.signature(get_object(cfg.pop("_target_"))).parameters
    cfg.pop("_partial_", None)
    assert set(cfg) <= set(params), f"{group}={option} sets keys its constructor does not take"
    doubled = [k for k in cfg if params[k].default is not inspect.Parameter.empty]
    assert doubled == KEPT_FOR_OLD_CHECKPOINTS.get((group, option), []), (
        f"{group}={option}: constructor defaults for {doubled}, which the YAML sets"
    )


# Keys added after checkpoints were saved without them, whose YAML value is an interpolation that
# a checkpoint's plain config cannot carry: the constructor's default is what such a checkpoint means.
KEPT_FOR_OLD_CHECKPOINTS = {("tokenizer", "grokking"): ["op"]}


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


# ---------------------------------------------------------------- every key, every bad value
#
# Each entry point's own keys (its schema in nanugpt/config.py) and every argument of every
# option of the plugin groups in PLUGIN_GROUPS get out-of-range and wrong-typed values. Each must
# end in what the user would see as one clean message naming the key: Hydra's composition error
# (types, choices) or a one-paragraph UserError from validate_* or the plugin's constructor, and
# nothing may be written to the data dir. Overrides are applied to a config composed once, the
# way Hydra's compose applies `key=value` (a real compose per value would cost ~0.3 s each).
#
# Placeholders in values: {file} an existing file, {missing} a path that does not exist, {dir}
# an existing directory.

SCHEMA_BAD: dict[str, dict[str, list[str]]] = {
    "train": {
        "training.max_steps": ["0", "-1", "abc", "1.5"],
        "training.global_batch_size": ["0", "-8", "abc"],
        "training.device_batch_size": ["0", "-8", "abc"],
        "training.grad_clip": ["-1", "nan", "abc"],
        "training.dtype": ["fp16", "float64", "[auto]"],
        "training.compile": ["maybe"],
        "training.seed": ["-1", "4294967296", "abc"],
        "training.device": ["gpu", "cuda:0"],
        "training.threads": ["0", "-2", "abc"],
        "training.skip_nonfinite": ["maybe"],
        "training.parallel": ["maybe", "fsdp2"],
        "training.activation_checkpointing": ["maybe"],
        "training.zero1": ["maybe"],  # removed; any valid value is refused by validate_train (test_fsdp.py)
        "training.detect_anomaly": ["maybe"],
        "training.overfit_batches": ["-1", "abc", "1.5"],
        "eval.every": ["0", "-100", "abc"],
        "eval.iters": ["0", "-1", "abc"],
        "eval.test_iters": ["-1", "abc"],
        "eval.checkpoint": ["best", "all"],
        "eval.keep_last": ["-1", "abc"],
        "eval.checkpoint_every_minutes": ["-1", "nan", "abc"],
        "eval.checkpoint_not_before_step": ["-1", "1.5", "abc"],
        "logging.every": ["0", "-1", "abc"],
        "logging.progress": ["maybe"],
        "logging.peak_tflops": ["0", "-1", "nan", "abc"],
        "logging.time_phases_every": ["-1", "1.5", "abc"],
        "logging.wandb.mode": ["on", "1"],
        "logging.wandb.project": ["[a]"],
        "logging.wandb.entity": ["[a]"],
        "logging.wandb.name": ["[a]"],
        "logging.wandb.group": ["[a]"],
        "tags": ["5", "{{a:1}}"],
        "logging.wandb.log_checkpoints": ["maybe"],
        "paths.data_dir": ["''", "{file}", "{file}/sub", "[a]"],
        "paths.output_root": ["{file}", "[a]"],
        "paths.sweep_root": ["[a]"],  # an unusable sweep dir: test_errors.py (the multirun callback)
        "resume": ["''", "{missing}", "{dir}", "[a]"],
    },
    "generate": {
        "ckpt": ["[a]"],  # missing: test_required_values_name_the_key
        "prompt": ["[a]"],
        "prompts": ["abc", "5"],
        "stop": ["['']", "['x','']", "5"],
        "use_cache": ["maybe"],
        "window_keep": ["0", "-1", "abc"],
        "compile": ["maybe"],
        "max_new_tokens": ["0", "-1", "abc"],
        "num_samples": ["0", "-1", "abc"],
        "temperature": ["-0.1", "nan", "abc"],
        "top_k": ["0", "-1", "abc"],
        "top_p": ["0", "-0.5", "1.5", "abc"],
        "seed": ["-1", "abc"],
        "progress": ["maybe"],
        "device": ["gpu"],
        "trust_checkpoint": ["maybe"],
    },
    "prepare": {
        "force": ["maybe"],
        "paths.data_dir": ["''", "{file}", "[a]"],
        "paths.output_root": ["[a]"],
        "paths.sweep_root": ["[a]"],
    },
}

# The groups whose options are checked argument by argument: all of them. Each option's bad
# values are in PLUGIN_BAD (by _target_); a group that train.py builds in a special way (a
# partial factory, a model that waits for the data's vocab) has that build in BUILD.
PLUGIN_GROUPS = GROUPS
HUB_BAD = {
    "name": ["''", "[a]"],
    "path": ["''", "[a]"],
    "hub_config": ["''", "[a]"],
    "revision": ["''", "[a]"],
    "data_files": ["5", "true"],
    "train_split": ["''", "[a]"],
    "val_split": ["''", "[a]"],
    "val_fraction": ["0", "1", "-0.1", "abc"],
    "text_field": ["''", "5"],
    "eot_between_docs": ["maybe", "1"],
    "text_separator": ["5", "[a]"],
    "max_docs": ["0", "-1", "abc"],
    "shard_docs": ["0", "-1", "abc"],
    "shard_tokens": ["0", "2147483648", "abc"],
    "num_proc": ["0", "-1", "abc"],
    "test_split": ["''", "[a]"],
    "cache_dir": ["''", "[a]"],
}
FRACTION_BAD = ["0", "1", "-0.1", "nan", "abc"]
# Model sizes; 7 divides none of the configs' widths, 3 none of their head counts.
SHAPE_BAD = {
    "vocab_size": ["0", "abc"],  # null: from the data
    "context_length": ["0", "-1", "abc"],
    "n_layer": ["0", "1.5", "abc"],
    "n_head": ["0", "7", "abc"],
    "n_embd": ["0", "abc"],
}
DROPOUT_BAD = ["-0.1", "1", "abc"]
GPT_BAD = {
    **SHAPE_BAD,
    "dropout": DROPOUT_BAD,
    "bias": ["maybe", "1"],
    "vocab_multiple": ["0", "abc"],
}
ROPE_BAD = {"rope_theta": ["0", "-1", "abc"]}
LLAMA_BAD = {
    **SHAPE_BAD,
    **ROPE_BAD,
    "n_kv_head": ["0", "3", "abc"],
    "intermediate_size": ["0", "abc"],
    "norm_eps": ["0", "abc"],
    "tie_embeddings": ["maybe", "1"],
}
ADAMW_BAD = {
    "lr": ["0", "-3e-4", "abc"],
    "weight_decay": ["-0.1", "abc"],
    "betas": ["[0.9]", "[0.9,1.0]", "[1.5,0.9]", "abc"],
    "eps": ["0", "abc"],
    "fused": ["maybe", "1"],
    "decay_all": ["maybe", "1"],
}
AMP_BAD = {"enabled": ["maybe", "1"], "init_scale": ["0", "abc"], "growth_interval": ["0", "1.5", "abc"]}
PREPARE_BAD = {"shard_tokens": ["0", "2147483648", "abc"], "num_proc": ["0", "-1", "abc"]}
PLUGIN_BAD: dict[str, dict[str, list[str]]] = {
    "nanugpt.data.pystdlib.PyStdlibCorpus": {
        "val_fraction": FRACTION_BAD,
        "max_bytes": ["0", "-1", "abc"],
        **PREPARE_BAD,
    },
    "nanugpt.data.text.TextFiles": {
        "path": ["''", "[a]", "{missing}"],
        "val_fraction": FRACTION_BAD,
        "glob": ["''", "[a]", "nothing-matches-*"],
        "encoding": ["5", "utf-9", "base64"],
        **PREPARE_BAD,
    },
    "nanugpt.data.shakespeare_char.TinyShakespeare": {
        "cache_dir": ["''", "[a]"],
        "local_path": ["''", "{missing}", "5"],
        "val_fraction": FRACTION_BAD,
        **PREPARE_BAD,
    },
    "nanugpt.data.hub.HubDataset": HUB_BAD,
    "nanugpt.data.grokking.ModularArithmetic": {
        "p": ["1", "91", "abc"],  # 91 = 7 x 13: no inverses for data.op=/
        "op": ["'%'", "5"],
        "train_fraction": FRACTION_BAD,
        "seed": ["-1", "abc"],
    },
    "nanugpt.data.arithmetic.ArithmeticStrings": {
        "op": ["'-'", "5"],
        "n_digits": ["0", "10", "abc"],
        "num_examples": ["1", "1000001", "abc"],
        "train_fraction": FRACTION_BAD,
        "reverse_answer": ["maybe", "1"],
        "seed": ["-1", "abc"],
    },
    "nanugpt.tokenizers.char.CharTokenizer": {"chars": ["''", "abca", "5"]},
    "nanugpt.tokenizers.tiktoken_bpe.TiktokenTokenizer": {
        "encoding": ["p50k_base", "''", "5"],
        "bpe_file": ["''", "{missing}", "5"],
    },
    "nanugpt.tokenizers.hf.HFTokenizer": {
        "path": ["''", "5", "{missing}"],
        "name": ["''", "5"],
        "train": ["maybe", "false"],  # false and no path: neither a file nor training
        "vocab_size": ["256", "-1", "abc"],
        "min_frequency": ["0", "abc"],
        "eot_token": ["''", "5"],
    },
    "nanugpt.tokenizers.grokking.GrokkingTokenizer": {"p": ["1", "abc"], "op": ["5", "'a b'"]},
    "nanugpt.data.shards.ShardFiles": {"path": ["''", "[a]", "{missing}", "{dir}"], "vocab_size": ["0", "abc"]},
    "nanugpt.models.gpt.GPT": GPT_BAD,
    "nanugpt.models.tiny_transformer.TinyTransformer": {**SHAPE_BAD, "dropout": DROPOUT_BAD},
    "nanugpt.models.gpt_modern.GPTModern": {**SHAPE_BAD, **ROPE_BAD, "logit_softcap": ["-1", "abc"]},
    "nanugpt.models.llama.Llama": LLAMA_BAD,
    "nanugpt.models.hf.hf_gpt2": {**SHAPE_BAD, "dropout": DROPOUT_BAD},
    "nanugpt.models.hf.hf_llama": LLAMA_BAD,
    "nanugpt.optim.adamw.adamw": ADAMW_BAD,
    "nanugpt.optim.sgd.sgd": {
        **{k: ADAMW_BAD[k] for k in ("lr", "weight_decay", "decay_all")},
        "momentum": ["1.0", "-0.5", "abc"],
        "nesterov": ["maybe", "1"],
    },
    "nanugpt.optim.muon.muon": {
        **{k: ADAMW_BAD[k] for k in ("lr", "weight_decay", "decay_all")},
        "momentum": ["1.0", "-0.5", "abc"],
        "momentum_warmup_steps": ["-1", "1.5", "abc"],
        "momentum_start": ["1.0", "-0.1", "abc"],
        "nesterov": ["maybe", "1"],
        "ns_steps": ["0", "100", "1.5", "abc"],
        "ns_dtype": ["fp8", "5"],
        "adjust_lr_fn": ["rms", "5"],
        "embed_lr": ["0", "abc"],
        "head_lr": ["0", "abc"],
        "scalar_lr": ["0", "abc"],
        "adamw_betas": ADAMW_BAD["betas"],
        "adamw_weight_decay": ADAMW_BAD["weight_decay"],
        "adamw_eps": ADAMW_BAD["eps"],
    },
    "nanugpt.sched.warmup_stable_decay.warmup_stable_decay": {
        "max_steps": ["0", "1.5", "abc"],
        "warmup_steps": ["-1", "2.5", "abc"],
        "decay_fraction": ["1.2", "-0.1", "abc"],
        "decay_shape": ["cube", "5"],
        "min_lr_ratio": ["1.5", "-0.1", "abc"],
    },
    "nanugpt.sched.lr_range_test.lr_range_test": {
        "max_steps": ["0", "abc"],
        "min_lr": ["0", "abc"],
        "max_lr": ["1e-6", "abc"],  # not above min_lr=1e-5
    },
    "nanugpt.losses.autoregressive.AutoregressiveLoss": {"ignore_index": ["0", "5", "null", "abc"]},
    "nanugpt.losses.arithmetic.AnswerLoss": {"ignore_index": ["0", "5", "null", "abc"]},
    "nanugpt.scalers.amp.AmpScaler": AMP_BAD,
    "nanugpt.scalers.per_tensor_norm.PerTensorNormScaler": {**AMP_BAD, "eps": ["0", "abc"]},
}
# Overrides an option needs before its other arguments can be judged one at a time.
OPTION_BASE = {
    ("data", "text"): ["data.path={dir}"],
    ("data", "shards"): ["data.path={shards}"],
    ("tokenizer", "hf"): ["tokenizer.train=true"],
}
# Options that cannot be built here with valid values (the BPE ranks would be downloaded).
NEEDS_NETWORK = {("tokenizer", "gpt2"), ("tokenizer", "cl100k"), ("tokenizer", "o200k")}
# How train.py builds a group before any data is prepared, where that is more than instantiate:
# the model, optimizer and schedule together on the meta device; the scaler's factory called.
BUILD: dict[str, Callable[[DictConfig], Any]] = {
    "model": check_model_optimizer_schedule,
    "optim": check_model_optimizer_schedule,
    "sched": check_model_optimizer_schedule,
    "scaler": lambda cfg: instantiate(cfg.scaler)("cpu", float16=False),
}


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """The leaf keys of a schema's sections; plugin groups (typed Any) are not its keys."""
    keys = []
    for f in fields(schema):
        hint = get_type_hints(schema)[f.name]
        if is_dataclass(hint):
            keys += schema_keys(hint, f"{prefix}{f.name}.")
        elif hint is not Any:
            keys.append(prefix + f.name)
    return keys


ENTRY_SCHEMAS = {"train": TrainConfig, "generate": GenerateConfig, "prepare": PrepareConfig}
# What each entry point builds before any data is prepared, in its order ("model": the model,
# optimizer and schedule on the meta device).
ENTRY_GROUPS = {
    "train": ["loss", "scaler", "model", "data", "tokenizer"],
    "generate": [],
    "prepare": ["data", "tokenizer"],
}


def test_the_table_lists_every_key_of_every_schema():
    for entry, schema in ENTRY_SCHEMAS.items():
        assert sorted(SCHEMA_BAD[entry]) == sorted(schema_keys(schema)), entry


def option_node(group: str, option: str) -> dict[str, Any]:
    """One option's YAML, with the options of its group that its defaults list names under it
    (scaler=none is amp's with enabled: false); read at collection time, where composing every
    option would cost seconds."""
    node = yaml.safe_load((Path(CONF_DIR) / group / f"{option}.yaml").read_text()) or {}
    base: dict[str, Any] = {}
    for entry in node.pop("defaults", []):
        assert isinstance(entry, str), f"{group}={option}: only same-group defaults are read here"
        if entry != "_self_":
            base.update(option_node(group, entry))
    return {**base, **node}


def option_args(group: str, option: str) -> tuple[str, list[str]]:
    """(_target_, argument names) of one option."""
    node = option_node(group, option)
    return node["_target_"], [k for k in node if not k.startswith("_")]


PLUGIN_ROWS = [(g, o, a) for g in PLUGIN_GROUPS for o in options(g) for a in option_args(g, o)[1]]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("places")
    (tmp / "a_file.txt").write_text("some text to train on\n" * 10)
    shards = tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):  # nanoGPT's headerless uint16 layout
        np.arange(1000, dtype=np.uint16).tofile(shards / f"{split}.bin")
    places = {"file": tmp / "a_file.txt", "missing": tmp / "missing.pt", "dir": tmp, "shards": shards}
    return {name: str(path) for name, path in places.items()}


@pytest.fixture(scope="module")
def composed(places, tmp_path_factory):
    """entry point name + base overrides -> that config, composed once per module. Data must
    never reach `untouched`, and run dirs resolve under `runs` (nothing creates them)."""
    untouched = tmp_path_factory.mktemp("data") / "untouched"
    runs = tmp_path_factory.mktemp("runs")
    paths = [f"paths.data_dir={untouched}", f"paths.output_root={runs}", f"paths.sweep_root={runs}"]
    base = {"train": paths, "prepare": paths, "generate": ["ckpt=model.pt"]}
    cache: dict[tuple[str, ...], DictConfig] = {}

    def get(entry: str, *overrides: str) -> DictConfig:
        key = (entry, *overrides)
        if key not in cache:
            register_configs()
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                lines = [*base[entry], *(o.format(**places) for o in overrides)]
                cache[key] = compose(config_name=entry, overrides=lines, return_hydra_config=entry == "train")
        return copy.deepcopy(cache[key])

    get.untouched = untouched  # type: ignore[attr-defined]
    return get


def apply_override(cfg: DictConfig, line: str) -> None:
    """`key=value` applied as Hydra's compose applies a command-line override (hydra-core 1.3's
    loader; composition errors come out as ConfigCompositionException like on the command line)."""
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides([line]), cfg)


def build(cfg: DictConfig, group: str) -> Any:
    return BUILD[group](cfg) if group in BUILD else instantiate(cfg[group])


def start(entry: str, cfg: DictConfig, groups: list[str], override: str | None = None) -> None:
    """`override` applied, then what the entry point does before any work: validate, then build
    the plugins."""
    if override is not None:
        apply_override(cfg, override)
    if entry == "train":
        validate_train(cfg)
        check_train_environment(cfg, cfg.hydra.run.dir)
    elif entry == "generate":
        validate_generate(cfg)
    else:
        validate_prepare(cfg)
    for group in groups:
        build(cfg, group)


def user_error_message(*start_args: Any) -> str:
    """What the user would read after start(*start_args): a composition error (Hydra prints it
    and its cause), or a UserError's one paragraph. Anything else, or no error, fails the test."""
    try:
        start(*start_args)
    except ConfigCompositionException as err:
        return f"{err} {err.__cause__}"
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        assert "\n" not in str(user_error), f"not one paragraph: {user_error}"
        return str(user_error)
    pytest.fail("accepted")


@pytest.mark.parametrize("entry,key", [(e, k) for e, keys in SCHEMA_BAD.items() for k in keys])
def test_every_bad_value_of_an_entry_points_key_is_a_clean_error(entry, key, composed, places):
    for value in SCHEMA_BAD[entry][key]:
        cfg = composed(entry)
        line = f"{key}={value.format(**places)}"
        message = user_error_message(entry, cfg, ENTRY_GROUPS[entry], line)
        assert key in message, (line, message)
        assert not composed.untouched.exists(), line


@pytest.mark.parametrize("group,option,arg", PLUGIN_ROWS)
def test_every_bad_argument_of_a_plugin_option_is_a_clean_error(group, option, arg, composed, places):
    target, _ = option_args(group, option)
    values = PLUGIN_BAD.get(target, {}).get(arg)
    assert values, f"list bad values for {group}={option}'s {arg} in PLUGIN_BAD[{target!r}]"
    for value in values:  # through train's start-up; prepare builds data and tokenizer the same way
        cfg = composed("train", f"{group}={option}", *OPTION_BASE.get((group, option), []))
        line = f"{group}.{arg}={value.format(**places)}"
        message = user_error_message("train", cfg, [group], line)
        assert f"{group}.{arg}" in message, (line, message)
        assert not composed.untouched.exists(), line


@pytest.mark.parametrize("group,option", [(g, o) for g in PLUGIN_GROUPS for o in options(g)])
def test_the_base_of_every_plugin_row_is_accepted(group, option, composed):
    """So a row fails for its own bad value, not for its base."""
    cfg = composed("train", f"{group}={option}", *OPTION_BASE.get((group, option), []))
    start("train", cfg, [] if (group, option) in NEEDS_NETWORK else [group])


@pytest.mark.parametrize("entry", SCHEMA_BAD)
def test_the_base_of_every_schema_row_is_accepted(entry, composed):
    start(entry, composed(entry), ENTRY_GROUPS[entry])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["sched=wsd", "training.max_steps=100", "sched.warmup_steps=90"], "sched.warmup_steps=90 does not fit"),
        (["sched=lr_range_test", "sched.min_lr=0.1", "sched.max_lr=0.01"], "sched.max_lr=0.01 .* > 0.1"),
        (["model.n_embd=30", "model.n_head=4"], "model.n_head=4 does not divide model.n_embd=30"),
        (["model=llama_tiny", "model.n_embd=36"], "model.n_head=4 gives heads of odd width"),
        (["eval.checkpoint=none", "eval.checkpoint_every_minutes=30"], "but eval.checkpoint=none saves none"),
    ],
)
def test_values_that_only_conflict_together_are_named_together(overrides, message, composed):
    """Each fine alone, so no row of the tables above tries them; still caught before any data."""
    cfg = composed("train", *overrides)
    assert re.search(message, user_error_message("train", cfg, ENTRY_GROUPS["train"]))
    assert not composed.untouched.exists()


@pytest.mark.parametrize(
    "entry,overrides,message",
    [
        ("train", ["data=text"], "data.path has no value and no default; pass it on the command line, e.g. data.path="),
        ("prepare", ["data=text"], "data.path has no value"),
        ("generate", ["ckpt=???"], "ckpt has no value and no default; pass it on the command line, e.g. ckpt=outputs/"),
    ],
)
def test_required_values_name_the_key(entry, overrides, message, composed):
    cfg = composed(entry, *overrides)
    assert message in user_error_message(entry, cfg, [])


def test_data_dir_from_the_environment_is_named(composed, places, monkeypatch):
    for value, problem in [("", "is empty"), (places["file"], "is a file")]:
        monkeypatch.setenv("NANUGPT_DATA", value)
        cfg = composed("train", "paths.data_dir=${{oc.env:NANUGPT_DATA,data}}")
        message = user_error_message("train", cfg, [])
        assert f"paths.data_dir={value!r} (from NANUGPT_DATA)" in message and problem in message, message


def test_example_data_and_shards_need_no_data_dir(composed, places):
    for data in (["experiment=grokking"], ["data=shards", f"data.path={places['shards']}"]):
        cfg = composed("train", *data, f"paths.data_dir={places['file']}")
        start("train", cfg, ENTRY_GROUPS["train"])


def test_an_unwritable_dir_is_named(composed, tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    if os.access(read_only, os.W_OK):
        pytest.skip("this user (root) may write anywhere; the file cases above cover the check")
    cfg = composed("train", f"paths.data_dir={read_only}/data")
    assert "is not writable: this user may not write in" in user_error_message("train", cfg, [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_without_a_gpu_is_named(composed):
    for entry, key in [("train", "training.device"), ("generate", "device")]:
        cfg = composed(entry, f"{key}=cuda")
        message = user_error_message(entry, cfg, [])
        assert f"{key}=cuda, but torch sees no CUDA device" in message and f"{key}=auto" in message


def test_choices_come_back_as_plain_strings(composed):
    cfg = composed("train", "training.dtype=bfloat16", "eval.checkpoint=none", "logging.wandb.mode=offline")
    assert cfg.training.dtype == "bfloat16" and cfg.eval.checkpoint == "none" and cfg.logging.wandb.mode == "offline"
    assert {"bfloat16": 1}[cfg.training.dtype] == 1 and f"{cfg.training.dtype}" == "bfloat16"
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["training", "eval"]), enum_to_str=True)
    assert type(plain["training"]["dtype"]) is str and type(plain["eval"]["checkpoint"]) is str  # checkpoints


def test_each_default_lives_in_one_place():
    """The schema's sections have their defaults in nanugpt/config.py only: no primary YAML sets
    them again; paths only in the paths group."""
    for entry, schema in ENTRY_SCHEMAS.items():
        primary = yaml.safe_load((Path(CONF_DIR) / f"{entry}.yaml").read_text())
        assert not set(primary) & {f.name for f in fields(schema)}, entry
    assert all(f.default is MISSING for f in fields(PathsConfig))
    assert set(yaml.safe_load((Path(CONF_DIR) / "paths" / "default.yaml").read_text())) == {
        f.name for f in fields(PathsConfig)
    }
