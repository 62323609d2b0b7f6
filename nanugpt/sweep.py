"""After a `-m` sweep (any launcher: basic, local, slurm), collect each job's final metrics.

Registered as a Hydra callback in nanugpt/conf/train.yaml; writes `<sweep dir>/summary.jsonl`, one
object per job: its subdir, overrides, final step, last train/val loss and best val loss.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nanugpt.metrics import read_metrics
from nanugpt.utils import atomic_write

log = logging.getLogger("nanugpt.sweep")


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for metrics_path in sorted(sweep_dir.glob("*/metrics.jsonl"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job_dir = metrics_path.parent
        metrics = read_metrics(metrics_path)
        if not metrics:
            continue
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        val = [r["val/loss"] for r in metrics if "val/loss" in r]
        last_val = next((r for r in reversed(metrics) if "val/loss" in r), {})
        rows.append(
            {
                "job": job_dir.name,
                "overrides": yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else [],
                "step": metrics[-1]["step"],
                "train/loss": metrics[-1]["train/loss"],
                "val/loss": last_val.get("val/loss"),
                "best_val_loss": min(val) if val else None,
            }
        )
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize_sweep(sweep_dir)
        if not rows:
            return
        atomic_write(
            sweep_dir / "summary.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows)), mode="w"
        )
        log.info("Sweep summary (%s):", sweep_dir / "summary.jsonl")
        shared = set.intersection(*(set(r["overrides"]) for r in rows))  # show what the sweep varies
        for r in sorted(rows, key=lambda r: r["best_val_loss"] if r["best_val_loss"] is not None else math.inf):
            best = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "n/a"
            log.info(
                "  %s: best val %s at step %d | %s",
                r["job"],
                best,
                r["step"],
                " ".join(o for o in r["overrides"] if o not in shared),
            )
