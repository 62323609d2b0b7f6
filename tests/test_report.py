from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from nanugpt.metrics import ema, read_metrics
from nanugpt.report import write_report

from .conftest import REPO, TINY, run_cli

LRS = ["0.0003", "0.003"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real local sweep over two learning rates."""
    root = tmp_path_factory.mktemp("sweep")
    args = [*TINY, "training.max_steps=30", "eval.every=10", f"optim.lr={','.join(LRS)}", f"hydra.sweep.dir={root}"]
    run_cli("nanugpt.train", "-m", *args, cwd=root)
    return root


def table_rows(report: Path) -> list[list[str]]:
    lines = [line for line in report.read_text().splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def tab10_colors_in(png: Path) -> int:
    """How many of the first two tab10 line colours (blue, orange) appear in the image."""
    img = matplotlib.image.imread(png)[..., :3]
    found = 0
    for rgb in ((0.122, 0.467, 0.706), (1.0, 0.498, 0.055)):
        found += bool((np.abs(img - np.array(rgb)).max(axis=-1) < 0.02).sum() > 200)
    return found


def test_sweep_report_table_is_sorted_by_best_val_loss(sweep, tmp_path):
    out = run_cli("nanugpt.report", str(sweep), cwd=REPO).stdout
    report = sweep / "report.md"
    assert "| run | overrides | status |" in out and f"Wrote {report}" in out
    rows = table_rows(report)
    assert len(rows) == 2
    best = {}
    for job in ("0", "1"):
        metrics = read_metrics(sweep / job / "metrics.jsonl")
        best[job] = min(r["val/loss"] for r in metrics if "val/loss" in r)
    assert [r[0] for r in rows] == sorted(best, key=best.get)
    for row in rows:
        job = row[0]
        assert row[1] == f"`optim.lr={LRS[int(job)]}`"  # only the override that varies
        assert row[2] == "finished" and row[3] == "30/30"
        assert row[4] == f"{30 * 8 * 32:,}"  # tokens seen: steps x global batch x context
        assert row[5].startswith(f"{best[job]:.4f} (")
        assert len(row) == 9  # no accuracy-threshold columns: no run reached 0.99
    assert "Common overrides: " in report.read_text() and "`training.max_steps=30`" in report.read_text()
    for png in ("loss_curves.png", "accuracy_curves.png"):
        assert tab10_colors_in(sweep / png) == 2, png  # one line per run


def test_single_run_report_and_grokking_options(sweep, tmp_path):
    run_cli("nanugpt.report", str(sweep / "1"), "--log-step", "--name", "grok", "--out-dir", str(tmp_path), cwd=REPO)
    rows = table_rows(tmp_path / "grok.md")
    assert len(rows) == 1 and rows[0][0] == "1" and "`optim.lr=0.003`" in rows[0][1]
    assert (tmp_path / "grok_accuracy_curves.png").is_file() and (tmp_path / "grok_loss_curves.png").is_file()
    linear = tmp_path / "linear"
    run_cli("nanugpt.report", str(sweep / "1"), "--out-dir", str(linear), cwd=REPO)
    assert (linear / "accuracy_curves.png").read_bytes() != (tmp_path / "grok_accuracy_curves.png").read_bytes()


def copy_run(src: Path, dst: Path, keep_steps: int, log_until: str | None) -> Path:
    shutil.copytree(src, dst)
    rows = [r for r in read_metrics(src / "metrics.jsonl") if r["step"] <= keep_steps]
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if log_until is not None:
        log = (src / "log.txt").read_text()
        (dst / "log.txt").write_text(log[: log.rindex("\n", 0, log.index(log_until)) + 1])  # whole lines
    return dst


def test_status_running_failed_and_finished(sweep, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    copy_run(sweep / "0", root / "0", 30, None)  # finished
    copy_run(sweep / "1", root / "1", 12, "Done in ")  # still writing
    stalled = copy_run(sweep / "1", root / "2", 12, "Done in ")  # killed: silent for an hour
    old = os.path.getmtime(stalled / "log.txt") - 3600
    for name in ("log.txt", "metrics.jsonl"):
        os.utime(stalled / name, (old, old))
    crashed = copy_run(sweep / "1", root / "3", 12, "Done in ")
    with open(crashed / "log.txt", "a") as f:
        f.write("2026-01-01 00:00:00,000 ERROR nanugpt.train: Run failed: FloatingPointError: Train loss is nan\n")
    _, runs = write_report(root)
    assert {r.name: r.status for r in runs} == {"0": "finished", "1": "running", "2": "failed", "3": "failed"}


def test_accuracy_threshold_columns(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for step in range(1, 101):
        row = {"step": step, "train/loss": 1.0, "train/acc": min(1.0, step / 50)}
        if step % 10 == 0:
            row.update({"val/loss": 2.0 - step / 100, "val/acc": 1.0 if step >= 80 else 0.1})
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, _ = write_report(run)
    [row] = table_rows(report)
    assert row[-2:] == ["50", "80"]  # train/acc reaches 0.99 at step 50 (49.5 rounds up), val/acc at 80
    assert row[4] == "–" and row[5] == "1.0000 (100)"  # no run/tokens in these rows


def test_report_on_a_dir_without_runs_says_what_it_expects(tmp_path):
    proc = run_cli("nanugpt.report", str(tmp_path), cwd=REPO, check=False)
    assert proc.returncode != 0 and "holds no run" in proc.stderr and "multirun/<date>/<time>" in proc.stderr


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_ema_is_the_bias_corrected_weighted_mean_of_what_came_before(beta):
    """The one smoother (report --smooth, the lr range test): at step n, the mean of values
    1..n weighted beta^(n-i), so a flat curve stays flat from its first point on."""
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    weighted = [
        sum(beta ** (n - i) * v for i, v in enumerate(values[: n + 1])) / sum(beta ** (n - i) for i in range(n + 1))
        for n in range(len(values))
    ]
    assert ema(values, beta) == pytest.approx(weighted, rel=1e-12)
    assert ema([2.5] * 20, beta) == pytest.approx([2.5] * 20, rel=1e-12)
