"""Report on a run or a sweep: `python -m nanugpt.report <run dir | sweep dir> [--log-step]`.

Reads each run's `metrics.jsonl` (the source of truth), `.hydra/overrides.yaml` and `log.txt`,
and writes into the directory (or `--out-dir`):

    report.md            a table sorted by best val loss: overrides, tags (run_info.json's, when
                         any run has some), status, steps, tokens seen, losses, tokens/s, and the
                         first steps at which train/val accuracy reach 0.99
    loss_curves.png      train and val loss vs step, one colour per run
    accuracy_curves.png  train (solid) and val (dashed) accuracy vs step, one colour per run

`--log-step` puts the step axis on a log scale (grokking: val accuracy jumps long after train
accuracy); `--name grok` writes grok.md, grok_loss_curves.png and grok_accuracy_curves.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nanugpt.metrics import ema, read_metrics

ACC_THRESHOLD = 0.99
# Lines train.py logs: the last one in log.txt says what the process last did.
START_MARK, DONE_MARK, FAILED_MARK = "Run dir ", "Done in ", "Run failed: "


@dataclass
class Run:
    name: str
    path: Path
    overrides: list[str]
    rows: list[dict[str, Any]]
    max_steps: int | None
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def last(self, key: str) -> float | None:
        return next((r[key] for r in reversed(self.rows) if key in r), None)

    def best_val(self) -> tuple[float, int] | None:
        vals = [(r["val/loss"], r["step"]) for r in self.rows if "val/loss" in r]
        return min(vals) if vals else None

    def first_step_reaching(self, key: str, threshold: float = ACC_THRESHOLD) -> int | None:
        return next((r["step"] for r in self.rows if r.get(key, -1) >= threshold), None)

    def tokens_per_sec(self) -> float | None:
        values = [r["train/tokens_per_sec"] for r in self.rows[1:] if "train/tokens_per_sec" in r]  # step 1 warms up
        return statistics.median(values) if values else None


def find_run_dirs(root: Path) -> list[Path]:
    """`root` itself if it is a run, else every run below it (sweep jobs `<n>/`), in natural order."""
    if (root / "metrics.jsonl").is_file() or (root / ".hydra").is_dir():
        return [root]
    dirs = {p.parent for p in root.rglob("metrics.jsonl")} | {
        p.parent.parent for p in root.rglob(".hydra/overrides.yaml")
    }
    return sorted(dirs, key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(root).parts])


def read_max_steps(run_dir: Path) -> int | None:
    for name in ("resolved_config.yaml", ".hydra/config.yaml"):
        if (run_dir / name).is_file():
            cfg = yaml.safe_load((run_dir / name).read_text()) or {}
            steps = cfg.get("training", {}).get("max_steps")
            if isinstance(steps, int):
                return steps
    return None


def run_status(run_dir: Path, rows: list[dict[str, Any]], max_steps: int | None, stale_s: float) -> str:
    """finished / failed / running, from the last start, done or failed line in log.txt; without
    one, from the steps reached. A running run whose files went quiet for `stale_s` was killed."""
    status = None
    log = run_dir / "log.txt"
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            message = line.split(": ", 1)[-1] if ": " in line else line  # drop the timestamp/level prefix
            if message.startswith(START_MARK):
                status = "running"
            elif message.startswith(DONE_MARK):
                status = "finished"
            elif message.startswith(FAILED_MARK):
                status = "failed"
    if status is None:
        status = "finished" if rows and max_steps is not None and rows[-1]["step"] >= max_steps else "running"
    if status == "running":
        files = [p for p in (run_dir / "metrics.jsonl", log) if p.is_file()]
        last_write = max((p.stat().st_mtime for p in files), default=0.0)
        if time.time() - last_write > stale_s:
            status = "failed"
    return status


def load_run(run_dir: Path, root: Path, stale_s: float) -> Run:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    max_steps = read_max_steps(run_dir)
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    info_file = run_dir / "run_info.json"
    tags = (json.loads(info_file.read_text()).get("tags") or []) if info_file.is_file() else []
    status = run_status(run_dir, rows, max_steps, stale_s)
    return Run(name, run_dir, overrides, rows, max_steps, status, tags=[str(t) for t in tags])


def label_runs(runs: list[Run]) -> list[str]:
    """Give each run a label of the overrides that differ between runs; return the common ones."""
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in run.overrides) for run in runs]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1 or len(runs) == 1]
    for run, p in zip(runs, parsed, strict=False):
        run.labels = {k: p.get(k, "(default)") for k in varying}
    return [f"{k}={parsed[0][k]}" for k in keys if k not in varying and k in parsed[0]]


def legend_label(run: Run) -> str:
    label = " ".join(f"{k}={v}" for k, v in run.labels.items())
    return f"{run.name}: {label}" if label else run.name


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def fmt_tokens(tokens: int | None) -> str:
    if tokens is None:
        return "–"
    return f"{tokens / 1e9:.2f}B" if tokens >= 1e9 else f"{tokens / 1e6:.2f}M" if tokens >= 1e6 else f"{tokens:,}"


def table(runs: list[Run]) -> str:
    # The accuracy columns matter for algorithmic tasks (grokking); a language-model sweep never
    # reaches 0.99, so the columns would be all dashes.
    has_acc = any(run.first_step_reaching("train/acc") is not None for run in runs)
    has_tags = any(run.tags for run in runs)  # the top-level `tags` list each run was given
    header = [
        "run",
        "overrides",
        *(["tags"] if has_tags else []),
        "status",
        "steps",
        "tokens",
        "best val loss (step)",
        "final val loss",
        "final train loss",
        "tokens/s",
    ]
    if has_acc:
        header += [f"train acc ≥ {ACC_THRESHOLD} at step", f"val acc ≥ {ACC_THRESHOLD} at step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        best = run.best_val()
        steps = run.rows[-1]["step"] if run.rows else 0
        cells = [
            run.name,
            " ".join(f"`{k}={v}`" for k, v in run.labels.items()) or "–",
            *([", ".join(run.tags) or "–"] if has_tags else []),
            run.status,
            f"{steps}/{run.max_steps}" if run.max_steps else str(steps),
            fmt_tokens(run.last("run/tokens")),
            f"{best[0]:.4f} ({best[1]})" if best else "–",
            fmt(run.last("val/loss")),
            fmt(run.last("train/loss")),
            fmt(run.tokens_per_sec(), ",.0f"),
        ]
        if has_acc:
            cells += [str(run.first_step_reaching(k) or "–") for k in ("train/acc", "val/acc")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: list[Run], path: Path, kind: str, log_step: bool, smooth: float) -> None:
    """kind "loss": train and val loss side by side; "acc": train solid, val dashed, one panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train/acc", "val/acc")] if kind == "acc" else [("train/loss",), ("val/loss",)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "viridis")
    for ax, keys in zip(axes[0], panels, strict=False):
        for i, run in enumerate(runs):
            color = colors(i if len(runs) <= 10 else i / max(1, len(runs) - 1))
            for key in keys:
                points = [(r["step"], r[key]) for r in run.rows if r.get(key) is not None]
                if not points:
                    continue
                steps, values = zip(*points, strict=False)
                values = ema(list(values), smooth) if key.startswith("train/") and smooth > 0 else values
                dashed = key.startswith("val/") and kind == "acc"
                marker = "o" if key.startswith("val/") and len(points) <= 30 else None
                label = legend_label(run) if key == keys[0] else None
                ax.plot(
                    steps,
                    values,
                    color=color,
                    linestyle="--" if dashed else "-",
                    marker=marker,
                    markersize=3,
                    linewidth=1.3,
                    label=label,
                )
        title = {"train/loss": "train loss", "val/loss": "val loss"}.get(
            keys[0], "accuracy: train (solid), val (dashed)"
        )
        if kind == "loss" and keys[0] == "train/loss" and smooth > 0:
            title += f" (EMA {smooth})"
        ax.set_title(title)
        ax.set_xlabel("step (log scale)" if log_step else "step")
        ax.set_ylabel("accuracy" if kind == "acc" else "loss (nats/token)")
        if log_step:
            ax.set_xscale("log")
        if kind == "acc":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    if handles:  # outside the axes, so that it never hides a curve
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(
    root: Path,
    out_dir: Path | None = None,
    name: str = "",
    log_step: bool = False,
    smooth: float = 0.0,
    stale_minutes: float = 30,
) -> tuple[Path, list[Run]]:
    root = root.resolve()
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise FileNotFoundError(
            f"{root} holds no run: expected metrics.jsonl or .hydra/ in it or in its subdirectories "
            "(a run dir outputs/<date>/<time>/ or a sweep dir multirun/<date>/<time>/)."
        )
    runs = [load_run(d, root, stale_minutes * 60) for d in run_dirs]
    runs.sort(key=lambda r: (r.best_val() is None, r.best_val() or (0.0, 0)))
    common = label_runs(runs)
    out_dir = (out_dir or root).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{name}_" if name else ""
    loss_png, acc_png = out_dir / f"{prefix}loss_curves.png", out_dir / f"{prefix}accuracy_curves.png"
    plot_curves(runs, loss_png, "loss", log_step, smooth)
    has_acc = any("train/acc" in r for run in runs for r in run.rows)
    if has_acc:
        plot_curves(runs, acc_png, "acc", log_step, smooth)
    kind = "Sweep" if len(runs) > 1 or runs[0].path != root else "Run"
    md = [f"# {kind} report: {root}", ""]
    if common:
        md += ["Common overrides: " + " ".join(f"`{o}`" for o in common), ""]
    md += [table(runs), "", f"![loss curves]({loss_png.name})"]
    if has_acc:
        md += ["", f"![accuracy curves]({acc_png.name})"]
    report = out_dir / f"{name or 'report'}.md"
    report.write_text("\n".join(md) + "\n")
    return report, runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanugpt.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dir", type=Path, help="a run dir (outputs/<date>/<time>) or a sweep dir (multirun/<date>/<time>)"
    )
    parser.add_argument("--log-step", action="store_true", help="log-scale step axis on the plots")
    parser.add_argument(
        "--name", default="", help="output name: NAME.md, NAME_loss_curves.png, NAME_accuracy_curves.png"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: the dir itself)")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA factor for train curves, 0 (raw) to <1")
    parser.add_argument(
        "--stale-minutes", type=float, default=30, help="a run with no output for this long is reported failed"
    )
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        sys.exit(
            f"{args.dir} is not a directory; pass a run dir (outputs/<date>/<time>) or a sweep dir "
            "(multirun/<date>/<time>)."
        )
    if not 0 <= args.smooth < 1:
        sys.exit(f"--smooth {args.smooth} must be in [0, 1): the weight of the running average.")
    try:
        report, runs = write_report(args.dir, args.out_dir, args.name, args.log_step, args.smooth, args.stale_minutes)
    except FileNotFoundError as e:
        sys.exit(str(e))
    print(report.read_text().split("\n\n![")[0])
    print(f"\nWrote {report} and the plots beside it.")


if __name__ == "__main__":
    main()
