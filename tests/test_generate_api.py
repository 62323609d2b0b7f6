"""`generate` pointed at a run dir, and the Python sampling API a notebook uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nanugpt.checkpoint import read_log, resolve_checkpoint
from nanugpt.errors import CheckpointError, ConfigError
from nanugpt.generate import Sampler
from nanugpt.train import train
from tests.conftest import TINY, compose_train, run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gen_api") / "run"
    train(compose_train([*TINY, "training.max_steps=6", "eval.every=2", "eval.iters=2", "eval.keep_last=3"]), run)
    return run


def test_a_run_dir_resolves_to_best_else_the_newest_logged_checkpoint(run_dir, tmp_path):
    ckpts = run_dir / "checkpoints"
    assert resolve_checkpoint(run_dir) == ckpts / "best.pt"
    assert resolve_checkpoint(ckpts) == ckpts / "best.pt"
    assert resolve_checkpoint(ckpts / "step_0000004.pt") == ckpts / "step_0000004.pt"  # a file stays itself
    no_best = tmp_path / "no_best"
    shutil.copytree(ckpts, no_best)
    (no_best / "best.pt").unlink()
    (no_best / "last.pt").unlink()
    newest = max(read_log(no_best), key=lambda e: e["step"])
    assert newest["step"] == 6 and resolve_checkpoint(no_best) == no_best / "step_0000006.pt"
    empty = tmp_path / "empty" / "checkpoints"
    empty.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_checkpoint(empty.parent)


def test_sampler_loads_once_and_samples_like_the_cli(run_dir):
    sampler = Sampler.load(run_dir)  # as in a notebook
    assert sampler.path == run_dir / "checkpoints" / "best.pt"
    one = sampler("def ", max_new_tokens=20, seed=7, temperature=0.8)
    assert isinstance(one, str) and one.startswith("def ") and len(one) > len("def ")
    assert sampler("def ", max_new_tokens=20, seed=7, temperature=0.8) == one  # seeded
    many = sampler(["def ", "class "], max_new_tokens=10, num_samples=2, temperature=1.0)
    assert len(many) == 4 and [t[:4] for t in many] == ["def ", "def ", "clas", "clas"]
    greedy = sampler("import ", max_new_tokens=12, temperature=0)
    assert greedy == sampler("import ", max_new_tokens=12, temperature=0, seed=99)  # greedy ignores the seed
    cli = run_cli(
        "nanugpt.generate", f"ckpt={run_dir}", 'prompt="def "', "max_new_tokens=20", "seed=7", cwd=run_dir
    ).stdout
    assert cli == one + "\n"
    with pytest.raises(TypeError, match="Unknown sampling option.*temprature.*valid: .*temperature"):
        sampler("def ", temprature=0.5)
    # the CLI's ranges (GenerateConfig) hold for the API's options too, checked before sampling
    with pytest.raises(ConfigError, match=r"top_p=1.5 is out of range: it must be a number > 0 and <= 1"):
        sampler("def ", top_p=1.5)
    with pytest.raises(ConfigError, match="max_new_tokens='20' is a str: it must be an integer >= 1"):
        sampler("def ", max_new_tokens="20")
