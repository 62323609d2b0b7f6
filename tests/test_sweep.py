"""A real `-m` sweep with one failing job still leaves summary.jsonl, a row per job, the failed
one marked with its error (nanugpt/sweep.py writes each job's row when the job ends)."""

from __future__ import annotations

import json

from .conftest import TINY, run_cli


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
