"""After a `-m` sweep (any launcher: basic, local, slurm), collect each job's final metrics.

Registered as a Hydra callback in nanugpt/conf/train.yaml; keeps `<sweep dir>/summary.jsonl`, one
object per job: its subdir, status (finished or failed, with the error), overrides, final step,
last train/val loss and best val loss. Each job adds its row when it ends, in the job's own
process (a Slurm job writes it from its node), so the summary exists whatever fails: Hydra
stops a sweep with a failed job before its end-of-sweep callback.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from nanugpt.errors import find_user_error
from nanugpt.metrics import read_metrics
from nanugpt.utils import atomic_write

log = logging.getLogger("nanugpt.sweep")

SUMMARY_NAME = "summary.jsonl"


def job_summary(job_dir: Path, overrides: list[str], error: BaseException | None) -> dict[str, Any]:
    metrics = read_metrics(job_dir / "metrics.jsonl") if (job_dir / "metrics.jsonl").is_file() else []
    val = [r["val/loss"] for r in metrics if "val/loss" in r]
    row = {
        "job": job_dir.name,
        "status": "failed" if error is not None else "finished",
        "overrides": overrides,
        "step": metrics[-1]["step"] if metrics else 0,
        "train/loss": metrics[-1].get("train/loss") if metrics else None,
        "val/loss": next((r["val/loss"] for r in reversed(metrics) if "val/loss" in r), None),
        "best_val_loss": min(val) if val else None,
    }
    if error is not None:
        user_error = find_user_error(error)  # its one paragraph, without the CLI's "Error: " wrapper
        row["error"] = str(user_error) if user_error is not None else f"{type(error).__name__}: {error}"
    return row


def read_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    path = sweep_dir / SUMMARY_NAME
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def add_job(sweep_dir: Path, row: dict[str, Any]) -> None:
    """Put `row` into the summary (replacing the job's earlier one, e.g. before a requeue).
    Jobs end side by side, on several nodes: one at a time under a lock file."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = {r.get("job"): r for r in read_summary(sweep_dir)}
        rows[row["job"]] = row
        ordered = sorted(rows.values(), key=lambda r: (len(str(r.get("job"))), str(r.get("job"))))
        atomic_write(
            sweep_dir / SUMMARY_NAME, lambda f: f.write("".join(json.dumps(r) + "\n" for r in ordered)), mode="w"
        )


def job_error(job_return: JobReturn) -> BaseException | None:
    if job_return.status != JobStatus.FAILED:
        return None
    try:
        job_return.return_value  # noqa: B018 (raises the job's exception)
    except Exception as err:
        return err
    return None


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        row = job_summary(job_dir, list(config.hydra.overrides.task), job_error(job_return))
        add_job(Path(config.hydra.sweep.dir), row)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = read_summary(sweep_dir)
        if not rows:
            return
        log.info("Sweep summary (%s):", sweep_dir / SUMMARY_NAME)
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
