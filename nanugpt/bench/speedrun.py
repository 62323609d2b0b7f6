"""`python -m nanugpt.bench speedrun`: whole training runs of an experiment, timed from process
start to exit, against a goal (final val loss within a wall time)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch
from omegaconf import DictConfig

from nanugpt.bench.common import Result, training_overrides


def bench_speedrun(cfg: DictConfig) -> Result:
    """Run `python -m nanugpt.train experiment=<bench.experiment> [overrides]` bench.repeats
    times, each a fresh process with a fresh data cache and run dir, timing the wall clock from
    process start to exit (imports, data preparation, compilation, evals and checkpoint
    included), and read the final val loss from its metrics.jsonl."""
    bench = cfg.bench
    rows = []
    for i in range(bench.repeats):
        row = one_run(training_overrides(), bench.target_loss)  # experiment=<bench.experiment> among them
        rows.append({"repeat": i, **row})
        print(
            f"repeat {i}: {row['wall_s']:.1f} s wall ({row['cpu_s']:.1f} CPU s), final val loss "
            f"{row['final_val_loss']:.4f} (load avg {row['load_avg_1m_at_start']:.1f})",
            flush=True,
        )
    walls, losses = [r["wall_s"] for r in rows], [r["final_val_loss"] for r in rows]
    rows.append(
        {
            "repeat": "median",
            "wall_s": median(walls),
            "cpu_s": median([r["cpu_s"] for r in rows]),
            "final_val_loss": median(losses),
            "worst_val_loss": max(losses),
            "goal_met": median(walls) <= bench.target_wall_s and max(losses) <= bench.target_loss,
        }
    )
    goal = f"goal: val loss <= {bench.target_loss} in <= {bench.target_wall_s} s"
    return Result(torch.device("cpu"), rows, title=f"{bench.experiment} | {goal}")


def one_run(overrides: list[str], target_loss: float) -> dict[str, Any]:
    """One training process in a temporary dir, and its figures."""
    with tempfile.TemporaryDirectory(prefix="nanugpt-speedrun-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "nanugpt.train",
            *overrides,
            f"paths.data_dir={tmp}/data",
            f"hydra.run.dir={run_dir}",
            "logging.wandb.mode=disabled",
        ]
        load = os.getloadavg()[0]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # what load cannot inflate much
        if proc.returncode != 0:
            raise SystemExit(f"speedrun failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(m["step"], m["val/loss"]) for m in metrics if "val/loss" in m]
    row = {
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": metrics[-1]["step"],
        "final_val_loss": evals[-1][1],
        # the first 10 steps hold compilation and warm-up
        "median_tokens_per_s": median([m["train/tokens_per_sec"] for m in metrics[10:] or metrics]),
        "final_train_loss": metrics[-1]["train/loss"],
        "first_eval_step_at_target": next((step for step, loss in evals if loss <= target_loss), None),
        "load_avg_1m_at_start": round(load, 2),
    }
    return row
