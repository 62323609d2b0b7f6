"""Metrics: `metrics.jsonl` (one JSON object per step, the source of truth) and console lines."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from nanugpt.utils import atomic_write

log = logging.getLogger("nanugpt.metrics")


class MetricsFile:
    """Appends one JSON object per line and flushes, so readers (reports, tests, resumed runs)
    always see whole lines; a resumed run appends to the same file."""

    def __init__(self, path: Path, truncate_after_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and path.exists():
            # A resumed run redoes the steps after its checkpoint: drop their stale rows.
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= truncate_after_step]
            atomic_write(
                path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept)), mode="w"
            )  # a kill here loses no rows
        self.file = open(path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a metrics.jsonl. A bad last line is a writer killed mid-line and is dropped
    quietly; a bad line anywhere else is damage (a disk, an editor): it is skipped with a
    warning, and the rows after it are kept."""
    lines = Path(path).read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        row = _parse_row(line)
        if row is not None:
            rows.append(row)
        elif number < len(lines) and line.strip():
            log.warning(
                "%s: line %d is not a metrics row (%.40r); skipped, the rows after it kept.", path, number, line
            )
    return rows


def ema(values: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (as Adam's moments and fastai's lr finder): the
    first value is kept as it is, not pulled towards a zero start. `beta` 0 returns `values`."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def console_line(row: dict[str, Any], max_steps: int, eta_s: float) -> str:
    parts = [f"step {row['step']:>{len(str(max_steps))}}/{max_steps}", f"loss {row['train/loss']:.4f}"]
    if "val/loss" in row:
        parts.append(f"val {row['val/loss']:.4f}")
    if "test/loss" in row:
        parts.append(f"test {row['test/loss']:.4f}")
    parts += [
        f"acc {row['train/acc']:.3f}",
        f"lr {row['run/lr']:.2e}",
        f"norm {row['train/pre_clip_norm']:.2f}",
        f"{row['train/tokens_per_sec']:,.0f} tok/s",
        f"MFU {row['train/mfu']:.1%}" if row.get("train/mfu") is not None else "MFU n/a",
        *([f"peak mem {row['run/peak_gpu_mem_gib']:.2f} GiB"] if "run/peak_gpu_mem_gib" in row else []),
        *([f"peak RSS {row['run/peak_rss_gib']:.2f} GiB"] if "run/peak_rss_gib" in row else []),
        f"ETA {format_duration(eta_s)}",
    ]
    return " | ".join(parts)
