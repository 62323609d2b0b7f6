"""Plot train/val accuracy of grokking runs on a log step axis and print steps-to-99% as a table.

    python docs/grokking_plot.py outputs/<date>/<time> [more run dirs or a multirun dir] --out docs/grokking.png

A stand-in until `python -m nanugpt.report` draws these; reads only each run's metrics.jsonl and
.hydra/overrides.yaml (for the label).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from nanugpt.metrics import read_metrics  # noqa: E402


def first_step(rows: list[dict], key: str, threshold: float = 0.99) -> int | None:
    return next((r["step"] for r in rows if key in r and r[key] >= threshold), None)


def run_dirs(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        found += [p] if (p / "metrics.jsonl").is_file() else sorted((m.parent for m in p.glob("*/metrics.jsonl")), key=lambda d: d.name)
    return found


def label(run: Path) -> str:
    overrides = run / ".hydra" / "overrides.yaml"
    keep = ("optim.weight_decay", "data.p", "data.op", "data.train_fraction", "optim.lr")
    items = yaml.safe_load(overrides.read_text()) if overrides.is_file() else []
    return ", ".join(o.split(".", 1)[1] for o in items if o.split("=")[0] in keep) or run.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="grokking.png")
    args = parser.parse_args()
    runs = run_dirs(args.runs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    print("| run | steps | train acc ≥ 99% at step | val acc ≥ 99% at step | ratio |\n|---|---|---|---|---|")
    for i, run in enumerate(runs):
        rows = read_metrics(run / "metrics.jsonl")
        evals = [r for r in rows if "val/acc" in r]
        color = f"C{i}"
        name = label(run)
        ax.plot([r["step"] for r in rows], [r["train/acc"] for r in rows], color=color, alpha=0.35, lw=1)
        ax.plot([r["step"] for r in evals], [r["val/acc"] for r in evals], color=color, lw=2, label=name)
        t, v = first_step(rows, "train/acc"), first_step(evals, "val/acc")
        ratio = f"{v / t:.1f}x" if t and v else "-"
        print(f"| {name} | {rows[-1]['step']} | {t or 'not reached'} | {v or 'not reached'} | {ratio} |")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Grokking a / b mod 97: train accuracy (thin) and val accuracy (thick)")
    ax.legend(loc="center left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
