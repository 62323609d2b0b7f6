"""Resuming with changed hyperparameters (nanugpt/resume.py): the new config's values apply to
every param group and to the schedule, the optimizer's moments and step counts carry over, and
the run logs which keys changed since the checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nanugpt.checkpoint import load_checkpoint
from nanugpt.metrics import read_metrics
from nanugpt.resume import config_changes, restore_scaler
from nanugpt.scalers.amp import AmpScaler
from nanugpt.sched.warmup_stable_decay import lr_factor
from nanugpt.train import train

from .conftest import TINY, compose_train


def cosine_lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """sched=cosine: decay over every step after warmup."""
    return lr_factor(step, warmup_steps, warmup_steps, max_steps - warmup_steps, "cosine", min_lr_ratio)


BASE = [*TINY, "eval.every=3", "eval.iters=1", "sched.warmup_steps=2"]


def train_then_resume(run_dir: Path, first: list[str], changed: list[str], caplog: pytest.LogCaptureFixture) -> str:
    """Train 3 steps, resume to 6 with `changed`; returns the changed-config line."""
    train(compose_train([*BASE, *first, "training.max_steps=3"]), run_dir)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nanugpt.train"):
        train(compose_train([*BASE, *first, *changed, "training.max_steps=6"]), run_dir)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed with changed config: ")]
    return line


def test_resume_applies_new_adamw_and_schedule_settings_and_keeps_the_moments(tmp_path, caplog):
    changed = [
        "optim.lr=3e-4",
        "optim.weight_decay=0.05",
        "optim.betas=[0.8,0.9]",
        "optim.eps=1e-6",
        "sched.warmup_steps=1",
        "sched.min_lr_ratio=0.5",
        "training.global_batch_size=16",  # 2 micro-steps of 8 from here on
    ]
    line = train_then_resume(tmp_path, ["optim.lr=1e-3"], changed, caplog)
    for change in (
        "optim.lr 0.001 -> 0.0003",
        "optim.weight_decay 0.1 -> 0.05",
        "optim.betas [0.9, 0.95] -> [0.8, 0.9]",
        "optim.eps 1e-08 -> 1e-06",
        "sched.warmup_steps 2 -> 1",
        "sched.min_lr_ratio 0.1 -> 0.5",
        "sched.max_steps 3 -> 6",
        "training.max_steps 3 -> 6",
        "training.global_batch_size 8 -> 16",
    ):
        assert change in line
    assert "optim.fused" not in line and "resume" not in line.split(": ", 1)[1]

    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # run/lr of step s is the schedule after s - 1 steps: the old curve, then the new one
    old = [1e-3 * cosine_lr_factor(s - 1, 2, 3, 0.1) for s in (1, 2, 3)]
    new = [3e-4 * cosine_lr_factor(s - 1, 1, 6, 0.5) for s in (4, 5, 6)]
    assert [r["run/lr"] for r in rows] == pytest.approx(old + new, rel=1e-12)

    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    decayed, plain = ckpt["optimizer"]["param_groups"]
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    for group in (decayed, plain):
        assert tuple(group["betas"]) == (0.8, 0.9) and group["eps"] == 1e-6 and group["initial_lr"] == 3e-4
    # Adam's step counts went on from the checkpoint's 3 (a fresh optimizer would be at 3 too, not 6)
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {6.0}
    assert ckpt["scheduler"]["base_lrs"] == [3e-4, 3e-4] and ckpt["scheduler"]["last_epoch"] == 6


def test_resume_applies_new_lrs_to_every_muon_group(tmp_path, caplog):
    first = ["optim=muon", "optim.lr=0.02", "optim.embed_lr=5e-3"]
    changed = ["optim.lr=0.01", "optim.embed_lr=1e-3", "optim.adamw_betas=[0.8,0.9]"]
    line = train_then_resume(tmp_path, first, changed, caplog)
    assert "optim.lr 0.02 -> 0.01" in line and "optim.embed_lr 0.005 -> 0.001" in line

    rows = read_metrics(tmp_path / "metrics.jsonl")
    factor = [cosine_lr_factor(s - 1, 2, 6, 0.1) for s in (4, 5, 6)]
    assert [r["run/lr"] for r in rows[3:]] == pytest.approx([0.01 * f for f in factor], rel=1e-12)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["optimizer"]
    [hidden] = state["muon"]["param_groups"]
    adamw_groups = {g["name"]: g for g in state["adamw"]["param_groups"]}
    after_6 = cosine_lr_factor(6, 2, 6, 0.1)  # the lr a 7th step would use
    assert hidden["lr"] == pytest.approx(0.01 * after_6)
    assert adamw_groups["embed"]["lr"] == pytest.approx(1e-3 * after_6)
    assert adamw_groups["scalar"]["lr"] == pytest.approx(5e-3 * after_6)  # unchanged (gpt_tiny ties its head)
    assert all(tuple(g["betas"]) == (0.8, 0.9) for g in adamw_groups.values())
    assert {float(s["step"]) for s in state["adamw"]["state"].values()} == {6.0}
    assert all("momentum_buffer" in s for s in state["muon"]["state"].values())


def test_config_changes_reads_an_untrusted_checkpoint_config():
    assert config_changes(None, {"optim": {"lr": 1.0}}) == []
    assert config_changes({"optim": "junk"}, {"optim": {"lr": 1.0}}) == [
        "optim.lr (unset) -> 1.0",
        "optim junk -> (unset)",
    ]
    assert config_changes({"resume": "auto", "a": [1]}, {"resume": "/x.pt", "a": [1]}) == []


def test_resume_keeps_the_loss_scale_reached_and_takes_the_configs_growth_interval():
    """A real float16 loss scaler (enabled on CPU too): the scale comes from the checkpoint, the
    growth interval (scaler.growth_interval) from the config."""
    saved = AmpScaler("cpu", float16=True, enabled=None, init_scale=1024.0, growth_interval=2000).state_dict()
    scaler = AmpScaler("cpu", float16=True, enabled=None, init_scale=2.0**16, growth_interval=10)
    restore_scaler(scaler, saved)
    assert scaler.get_scale() == 1024.0 and scaler.get_growth_interval() == 10
    fresh = AmpScaler("cpu", float16=True, enabled=None, init_scale=2.0**16, growth_interval=2000)
    restore_scaler(fresh, {})  # a bfloat16 run's checkpoint has no loss scale: start from the config's
    assert fresh.get_scale() == 2.0**16 and fresh.is_enabled()
