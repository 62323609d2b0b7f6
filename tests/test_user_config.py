"""A user's own config directory composes over the packaged one: a lab's recipes and models, and this
machine's settings in local/default.yaml, live outside the installed package and the repository.
(tests/test_packaging.py does the same with `--config-dir` through the installed console script.)"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nanugpt.config import register_configs
from nanugpt.metrics import read_metrics
from nanugpt.train import train
from nanugpt.utils import CONF_DIR

from .conftest import TINY
from .test_packaging import write_user_config_dir

LOCAL = """\
# @package _global_
# this machine: a cluster whose sweeps go to Slurm
defaults:
  - override /hydra/launcher: slurm
paths:
  data_dir: {data_dir}
hydra:
  launcher:
    partition: gpu
    account: my-lab
    setup: ["module load cuda/12.4"]
"""


def compose_with(user_dir: Path, overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", [f"hydra.searchpath=[file://{user_dir}]", *overrides], return_hydra_config=True)


def test_a_user_recipe_and_model_compose_over_the_packaged_configs_and_train(tmp_path):
    user_dir = write_user_config_dir(tmp_path / "lab_conf")
    tiny = [o for o in TINY if not o.startswith("model.")]
    cfg = compose_with(user_dir, ["experiment=my_recipe", *tiny])
    assert cfg.model.n_layer == 1 and cfg.model.n_embd == 24 and cfg.model.dropout == 0.0  # gpt_tiny's, then theirs
    assert cfg.optim._target_ == "nanugpt.optim.sgd.sgd" and list(cfg.tags) == ["lab"]
    del cfg.hydra  # what the task function gets
    train(cfg, tmp_path / "run")
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_local_default_composes_when_the_user_dir_has_one(tmp_path, data_dir):
    user_dir = write_user_config_dir(tmp_path / "lab_conf")
    without = compose_with(user_dir, [])
    assert without.paths.data_dir == str(data_dir) and without.hydra.launcher._target_.endswith("BasicLauncher")

    (user_dir / "local").mkdir()
    (user_dir / "local" / "default.yaml").write_text(LOCAL.format(data_dir=tmp_path / "scratch"))
    cfg = compose_with(user_dir, ["experiment=my_recipe"])
    assert cfg.paths.data_dir == str(tmp_path / "scratch")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.account == "my-lab" and list(launcher.setup) == ["module load cuda/12.4"]
    # The command line still wins over this machine's settings.
    assert compose_with(user_dir, ["paths.data_dir=/elsewhere"]).paths.data_dir == "/elsewhere"
