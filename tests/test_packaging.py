"""nanugpt installs like a library: the wheel built from this checkout, installed into a fresh venv outside
it (`--system-site-packages`, so torch and the rest come from this environment and nothing is downloaded),
trains, samples, reports and benchmarks through its console scripts from an unrelated directory, with a
user's own config directory composed over the packaged configs. And in process: a lab's recipes and models, and
this machine's settings in local/default.yaml, compose over the packaged configs from outside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from nanugpt.config import register_configs
from nanugpt.metrics import read_metrics
from nanugpt.train import train
from nanugpt.utils import CONF_DIR

from .conftest import REPO, TINY, compose_train, run_cli

# What in a checkout is not the project: runs, data, build outputs and caches at its root; caches anywhere.
TOP_LEVEL_NOISE = {".git", "outputs", "multirun", "data", "build", ".nox", ".venv", ".gpu", "wandb", ".pytest_cache"}


def not_source(directory: str, names: list[str]) -> set[str]:
    at_root = Path(directory) == REPO
    return {n for n in names if (at_root and n in TOP_LEVEL_NOISE) or n == "__pycache__" or n.endswith(".egg-info")}


USER_MODEL = """\
defaults:
  - gpt_tiny  # the packaged option, then this lab's changes
n_layer: 1
n_head: 2
n_embd: 24
context_length: 32
"""
USER_RECIPE = """\
# @package _global_
defaults:
  - override /model: my_model
  - override /optim: sgd
training:
  max_steps: 3
tags: [lab]
"""


WHERE_FROM = """
import sys
import hydra_plugins.nanugpt_launcher.local_launcher, nanugpt.bench, nanugpt.generate, nanugpt.report, nanugpt.train
ours = [m for name, m in sys.modules.items() if name.startswith(("nanugpt.", "hydra_plugins.nanugpt_launcher."))]
print(*(m.__file__ for m in ours))
"""


def write_user_config_dir(root: Path) -> Path:
    """A lab's own config directory: a model and a recipe that uses it, kept outside any checkout."""
    (root / "model").mkdir(parents=True)
    (root / "experiment").mkdir()
    (root / "model" / "my_model.yaml").write_text(USER_MODEL)
    (root / "experiment" / "my_recipe.yaml").write_text(USER_RECIPE)
    return root


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_the_wheel_installed_outside_the_checkout_trains_samples_reports_and_benchmarks(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info.
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    shutil.copytree(REPO, src, ignore=not_source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)], tmp_path, dict(os.environ))
    [wheel] = wheels.glob("nanugpt-*.whl")
    contents = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "nanugpt/conf/train.yaml",
        "nanugpt/data/loader.py",
        "nanugpt/conf/hydra/help/nanugpt.yaml",
        "nanugpt/conf/debug/default.yaml",
        "nanugpt/conf/hparams_search/lr_wd_optuna.yaml",
        "hydra_plugins/nanugpt_launcher/local_launcher.py",
    } <= contents
    assert not any(name.startswith("tests/") for name in contents)

    # A fresh venv that borrows this environment's packages (pip and setuptools too: a venv's own bundled
    # setuptools is older than torch requires); --no-index: nothing may be downloaded.
    venv = tmp_path / "venv"
    run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, dict(os.environ)
    )
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no route back to the checkout
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Every nanugpt module comes from the venv (an editable install of a checkout must not fill in gaps).
    where = run([str(bin_dir / "python"), "-c", WHERE_FROM], elsewhere, env)
    files = [Path(f).resolve() for f in where.stdout.split()]
    assert files and all(f.is_relative_to(venv.resolve()) for f in files), files

    # Train through the console script with a recipe and a model that live in the user's own dir.
    user_conf = write_user_config_dir(tmp_path / "lab_conf")
    run_dir = elsewhere / "run"
    tiny = [o for o in TINY if not o.startswith("model.")]
    trained = run(
        [
            "nanugpt-train",
            "--config-dir",
            str(user_conf),
            "experiment=my_recipe",
            *tiny,
            "eval.every=3",
            f"hydra.run.dir={run_dir}",
        ],
        elsewhere,
        env,
    )
    assert "Done in" in trained.stdout + trained.stderr
    config = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert config["model"]["n_layer"] == 1 and config["model"]["n_embd"] == 24  # the user's model
    assert config["optim"]["_target_"] == "nanugpt.optim.sgd.sgd" and config["tags"] == ["lab"]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    ckpt = run_dir / "checkpoints" / "last.pt"
    sample = run(
        ["nanugpt-generate", f"ckpt={ckpt}", 'prompt="def "', "max_new_tokens=8", "progress=false"], elsewhere, env
    )
    assert sample.stdout.startswith("def ")

    run(["nanugpt-report", str(run_dir)], elsewhere, env)
    assert "| lab |" in (run_dir / "report.md").read_text()  # the recipe's tags column

    prepared = run(["nanugpt-prepare", "data.max_bytes=300000"], elsewhere, env)
    assert "vocab 256" in prepared.stdout + prepared.stderr

    bench_out = elsewhere / "bench_eval.json"
    bench = ["nanugpt-bench", "eval", *TINY, "bench.warmup=1", "bench.steps=2", "bench.repeats=2"]
    run([*bench, f"bench.out={bench_out}"], elsewhere, env)
    assert json.loads(bench_out.read_text())["bench"] == "eval"

    # `python -m` works the same from the installed copy, and --help is the project's own.
    help_text = run([str(bin_dir / "python"), "-m", "nanugpt.train", "--help"], elsewhere, env).stdout
    assert help_text.startswith("nanugpt-train: train a GPT") and "debug: anomaly, default, overfit" in help_text


def test_help_lists_every_group_with_its_options_and_keys_that_exist(tmp_path):
    text = run_cli("nanugpt.train", "--help", cwd=tmp_path).stdout
    groups = dict(
        line.split(": ", 1) for line in text.split("== Groups (group=option) ==\n")[1].split("\n\n")[0].splitlines()
    )
    conf = Path(CONF_DIR)
    expected = {p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"}
    assert set(groups) == expected
    for group, listed in groups.items():
        assert listed.split(", ") == sorted(p.stem for p in (conf / group).glob("*.yaml")), group
    keys = text.split("== Most-used keys (key=value) ==\n")[1].split("\n\n")[0].split()
    cfg = compose_train()
    absent = object()
    missing = [k for k in keys if not k.startswith("hydra") and OmegaConf.select(cfg, k, default=absent) is absent]
    assert not missing, f"--help names keys the config does not have: {missing}"


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
