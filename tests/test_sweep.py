"""Sweeps: a real `-m` sweep with one failing job still leaves summary.jsonl, a row per job, the failed one
marked with its error (nanugpt/sweep.py writes each job's row when the job ends); an Optuna search
(hparams_search=); the local launcher's GPU per concurrent job; an interrupted sweep resumed by rerunning it in its
sweep dir."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hydra_plugins.nanugpt_launcher.local_launcher import gpu_slots, visible_gpus
from nanugpt.errors import ConfigError
from nanugpt.metrics import read_metrics

from .conftest import REPO, TINY, run_cli


def test_sweep_with_a_failed_job_still_writes_every_jobs_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # job 1: 12 sequences do not split into device batches of 8, a ConfigError before training
    args = [*TINY, "training.max_steps=2", "eval.every=2", "eval.iters=1", "training.global_batch_size=8,12"]
    proc = run_cli("nanugpt.train", "-m", *args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "training.global_batch_size=12 is not divisible" in proc.stderr

    finished, failed = [json.loads(line) for line in (sweep_dir / "summary.jsonl").read_text().splitlines()]
    assert finished["job"] == "0" and finished["status"] == "finished" and "error" not in finished
    assert finished["step"] == 2 and finished["val/loss"] == finished["best_val_loss"] > 0
    assert "training.global_batch_size=8" in finished["overrides"]
    assert failed["job"] == "1" and failed["status"] == "failed" and failed["step"] == 0
    assert "training.global_batch_size=12" in failed["overrides"]
    assert failed["error"].startswith("training.global_batch_size=12 is not divisible by training.device_batch_size=8")


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def sweep_point(job_dir: Path) -> dict[str, str]:
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in overrides)


@pytest.mark.slow
def test_optuna_tpe_search_over_lr_and_weight_decay_minimises_the_best_val_loss(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        if os.environ.get("CI"):
            raise AssertionError('the Optuna sweeper is not installed: pip install -e ".[optuna]"')
        pytest.skip('the Optuna sweeper is not installed (pip install -e ".[optuna]")')
    sweep_dir = tmp_path / "search"
    args = ["hparams_search=lr_wd_optuna", *TINY, "training.max_steps=30", "eval.every=10"]
    run_cli("nanugpt.train", *args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)

    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 6  # n_trials
    points = [sweep_point(j) for j in jobs]
    lrs = [float(p["optim.lr"]) for p in points]
    assert len(set(lrs)) == 6 and all(1e-4 <= lr <= 3e-2 for lr in lrs)
    assert all(0.0 <= float(p["optim.weight_decay"]) <= 0.3 for p in points)
    # Each trial's value is what main returned: the run's best val loss.
    best_val = [min(r["val/loss"] for r in read_metrics(j / "metrics.jsonl") if "val/loss" in r) for j in jobs]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = min(range(6), key=best_val.__getitem__)
    assert result["best_value"] == pytest.approx(best_val[best], rel=1e-6)
    assert {k: float(v) for k, v in points[best].items() if k.startswith("optim.")} == pytest.approx(
        result["best_params"]
    )


def test_gpu_slots_split_the_visible_gpus_between_concurrent_jobs(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,6,7")
    assert visible_gpus(None) == [2, 3, 6, 7]  # a restriction from outside holds
    assert visible_gpus([0, 1]) == [0, 1]  # hydra.launcher.visible_gpus wins
    assert gpu_slots([2, 3, 6, 7], 2) == [[2, 3], [6, 7]]
    assert gpu_slots([2, 3, 6, 7], 3) == [[2, 3, 6]]  # the 4th GPU cannot hold a job of 3
    assert gpu_slots([], 0) is None  # CPU jobs: no slots, no waiting
    with pytest.raises(ConfigError, match="gpus_per_node=3"):
        gpu_slots([0, 1], 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f0c2a1e")
    with pytest.raises(ConfigError, match="hydra.launcher.visible_gpus"):
        visible_gpus(None)


@pytest.mark.slow
def test_local_launcher_gives_each_concurrent_job_its_own_gpu(tmp_path):
    # There is no GPU here. The launcher only reads which GPU indices exist, so hydra.launcher.visible_gpus
    # declares two stand-ins (3 and 5); each job records the CUDA_VISIBLE_DEVICES it was started with in
    # run_info.json and trains on the CPU.
    sweep_dir = tmp_path / "sweep"
    run_cli(
        "nanugpt.train",
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.visible_gpus=[3,5]",
        "hydra.launcher.gpus_per_node=1",
        *TINY,
        "training.device=cpu",
        "training.max_steps=3",
        "training.seed=1,2,3",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    info = [json.loads((j / "run_info.json").read_text()) for j in job_dirs(sweep_dir)]
    gpus = [i["cuda_visible_devices"] for i in info]
    assert gpus[:2] == ["3", "5"] and gpus[2] in ("3", "5"), gpus
    # The third job waited for a GPU: it started only after one of the first two had finished.
    first_done = min((j / "metrics.jsonl").stat().st_mtime for j in job_dirs(sweep_dir)[:2])
    third_start = datetime.datetime.fromisoformat(info[2]["started_at"]).timestamp()  # whole seconds
    assert third_start >= math.floor(first_done)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_when_rerun_in_its_sweep_dir(tmp_path):
    sweep_dir = tmp_path / "sweep"
    steps = (10, 200)
    args = ["-m", *TINY, "eval.every=5", f"training.max_steps={steps[0]},{steps[1]}", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanugpt.train", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill the sweep (a crash, a lost node) once its second job has checkpointed: the first job is done.
    last = sweep_dir / "1" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert last.exists(), "the second job never checkpointed"
    assert read_metrics(sweep_dir / "1" / "metrics.jsonl")[-1]["step"] < steps[1]

    run_cli("nanugpt.train", *args, cwd=tmp_path)  # the same command, in the same sweep dir

    first, second = job_dirs(sweep_dir)
    resumed = [re.findall(r"Resumed from \S+ at step (\d+)", (job / "log.txt").read_text()) for job in (first, second)]
    assert resumed[0] == [str(steps[0])]  # finished: resumed at its end, nothing redone
    assert len(resumed[1]) == 1 and 0 < int(resumed[1][0]) < steps[1] and int(resumed[1][0]) % 5 == 0
    for job, n in zip((first, second), steps, strict=True):
        assert [r["step"] for r in read_metrics(job / "metrics.jsonl")] == list(range(1, n + 1))
    summary = [json.loads(line) for line in (sweep_dir / "summary.jsonl").read_text().splitlines()]
    assert [(s["job"], s["step"]) for s in summary] == [("0", steps[0]), ("1", steps[1])]
