"""debug=default / anomaly / overfit: each composes and runs, and does what it is for."""

from __future__ import annotations

import pytest
import torch

from nanugpt.errors import NonFiniteLossError
from nanugpt.metrics import read_metrics
from nanugpt.train import train

from .conftest import TINY, compose_train

# An lr that makes the second step's loss NaN, so that backward produces NaN.
DIVERGE = ["optim.lr=1e30", "sched=constant"]


@pytest.fixture(autouse=True)
def anomaly_mode_off_afterwards():
    yield
    torch.autograd.set_detect_anomaly(False)  # train() sets it for the process; leave none behind


def test_debug_default_is_a_few_steps_with_a_tiny_eval_and_no_wandb(tmp_path):
    preset = compose_train(["debug=default"])
    assert preset.logging.wandb.mode == "disabled" and preset.eval.iters == 2 and preset.logging.every == 1
    cfg = compose_train(["debug=default", *TINY])  # the command line still wins over the preset
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, cfg.training.max_steps + 1))
    assert [r["step"] for r in rows if "val/loss" in r] == [5, 10]
    assert not (tmp_path / "wandb_run_id").exists()


@pytest.mark.filterwarnings("ignore:Error detected in:UserWarning")  # anomaly mode's own report of the op
def test_debug_anomaly_names_the_backward_op_that_made_a_nan(tmp_path):
    with pytest.raises(NonFiniteLossError):  # without it: the run stops at the NaN loss, op unknown
        train(compose_train(["debug=default", *TINY, *DIVERGE]), tmp_path / "plain")
    with pytest.raises(RuntimeError, match=r"Function '\w+Backward\d*' returned nan values"):
        train(compose_train(["debug=anomaly", *TINY, *DIVERGE]), tmp_path / "anomaly")


def test_debug_overfit_memorises_one_batch(tmp_path):
    cfg = compose_train(["debug=overfit", *TINY])
    assert cfg.training.overfit_batches == 1
    train(cfg, tmp_path / "overfit")
    overfit = read_metrics(tmp_path / "overfit" / "metrics.jsonl")
    # The same steps on fresh batches, for comparison: one batch is learnt far faster than the corpus.
    steps = cfg.training.max_steps
    train(compose_train([*TINY, f"training.max_steps={steps}", f"eval.every={steps}"]), tmp_path / "fresh")
    fresh = read_metrics(tmp_path / "fresh" / "metrics.jsonl")
    assert overfit[-1]["train/loss"] < 0.5 * fresh[-1]["train/loss"]
    assert overfit[-1]["train/loss"] < overfit[-1]["val/loss"] - 1.0  # memorised, not learnt
