"""LR range test (Smith 2017): raise the lr exponentially from `min_lr` to `max_lr` over the run,
then read off the lr where the loss falls fastest, before it blows up.

    python -m nanugpt.train sched=lr_range_test training.max_steps=300 eval.checkpoint=none
    python -m nanugpt.sched.lr_range_test outputs/<date>/<time>    # -> lr_range_test.png, suggested lr

The schedule drives param group 0 (Muon's hidden matrices with optim=muon) from min_lr to max_lr
and scales every other group by the same factor, so their ratios to it stay as configured.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from nanugpt.errors import ConfigError, MissingInputError, UserError, check_value
from nanugpt.metrics import ema, read_metrics

MIN_STEPS = 10  # a suggestion needs a curve: at least this many steps ...
MIN_LR_RATIO = 10.0  # ... over at least one decade of lr


def range_test_lr(step: int, max_steps: int, min_lr: float, max_lr: float) -> float:
    """The lr of optimizer step `step` (0-based): min_lr at the first step, max_lr at the last."""
    return min_lr * (max_lr / min_lr) ** (min(step, max_steps - 1) / max(1, max_steps - 1))


def lr_range_test(optimizer: torch.optim.Optimizer, max_steps: int, min_lr: float, max_lr: float) -> LambdaLR:
    check_value(
        "sched.max_steps",
        max_steps,
        int,
        ge=1,
        fix="It follows training.max_steps unless set itself; set a positive step count (a few hundred).",
    )
    check_value("sched.min_lr", min_lr, float, gt=0, fix="Set the lr the test starts from, e.g. 1e-5.")
    check_value(
        "sched.max_lr",
        max_lr,
        float,
        gt=min_lr,
        fix=f"The test raises the lr from sched.min_lr={min_lr} to it: set it above that, e.g. 1.0.",
    )
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: range_test_lr(step, max_steps, min_lr, max_lr) / base_lr)


def suggest_lr(lrs: list[float], losses: list[float], beta: float = 0.9) -> dict[str, float]:
    """`min_loss_lr`: lr at the lowest smoothed loss; `suggested_lr`: a tenth of it (the usual
    rule: the peak lr for training sits safely below where the loss bottoms out); `steepest_lr`:
    where the smoothed loss falls fastest against log lr, before the minimum."""
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=False) if math.isfinite(loss)]
    if len(finite) < MIN_STEPS:
        raise ConfigError(
            f"An lr range test needs at least {MIN_STEPS} finite steps to suggest an lr; got {len(finite)}. Raise "
            "training.max_steps."
        )
    lrs, losses = [lr for lr, _ in finite], ema([loss for _, loss in finite], beta)
    i_min = min(range(len(losses)), key=losses.__getitem__)
    skip = max(1, len(losses) // 10)  # the EMA's first steps are noise
    slopes = [
        (losses[i + 1] - losses[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1]) for i in range(skip, max(skip + 1, i_min))
    ]
    i_steep = skip + min(range(len(slopes)), key=slopes.__getitem__) if i_min > skip + 1 else i_min
    return {
        "min_loss_lr": lrs[i_min],
        "suggested_lr": lrs[i_min] / 10,
        "steepest_lr": lrs[i_steep],
        "min_loss": losses[i_min],
    }


def check_lr_sweep(rows: list[dict[str, Any]], run_dir: Path) -> None:
    """Refuse a run whose lr did not rise at every step over at least MIN_STEPS steps and a
    decade: its loss-vs-lr curve mixes the schedule's phases, and a suggestion read off it means
    nothing."""
    how = "Run one with `python -m nanugpt.train sched=lr_range_test training.max_steps=300 eval.checkpoint=none`"
    points = [(r["step"], r["run/lr"]) for r in rows if isinstance(r.get("run/lr"), (int, float))]
    for (step_a, lr_a), (step_b, lr_b) in zip(points, points[1:], strict=False):
        if not lr_b > lr_a:
            raise ConfigError(
                f"{run_dir} is not an lr range test: its lr does not rise at step {step_b} ({lr_a:.3g} at step "
                f"{step_a}, {lr_b:.3g} at step {step_b}), so loss against lr mixes its schedule's phases and "
                f"suggests nothing. {how} and pass that run dir."
            )
    if len(points) < MIN_STEPS or points[-1][1] < MIN_LR_RATIO * points[0][1]:
        span = f"from {points[0][1]:.3g} to {points[-1][1]:.3g}" if points else "nowhere"
        raise ConfigError(
            f"{run_dir} swept too little to suggest an lr: its lr rose over {len(points)} step(s), {span}; an lr "
            f"range test needs at least {MIN_STEPS} steps and a factor of {MIN_LR_RATIO:g}. {how}."
        )


def plot_lr_range_test(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, dict[str, float]]:
    """Read `<run_dir>/metrics.jsonl`, write the loss-vs-lr plot with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise MissingInputError(
            f"{run_dir / 'metrics.jsonl'} does not exist; pass the run dir of a sched=lr_range_test run."
        )
    rows = read_metrics(run_dir / "metrics.jsonl")
    check_lr_sweep(rows, run_dir)
    lrs, losses = [r["run/lr"] for r in rows], [r["train/loss"] for r in rows]
    s = suggest_lr(lrs, losses)
    out = Path(out) if out else run_dir / "lr_range_test.png"

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, color="0.75", lw=0.8, label="train loss")
    ax.plot(lrs, ema(losses, 0.9), color="C0", lw=2, label="smoothed")
    ax.axvline(s["suggested_lr"], color="C2", ls="--", label=f"suggested lr {s['suggested_lr']:.2g} (min / 10)")
    ax.axvline(s["steepest_lr"], color="C1", ls=":", label=f"steepest descent {s['steepest_lr']:.2g}")
    ax.axvline(s["min_loss_lr"], color="C3", ls=":", label=f"min loss {s['min_loss_lr']:.2g}")
    ax.set_xscale("log")
    first = next(x for x in losses if math.isfinite(x))  # clip the blow-up so the dip stays readable
    ax.set_ylim(min(x for x in losses if math.isfinite(x)) * 0.95, first * 1.15)
    ax.set_xlabel("learning rate (param group 0)")
    ax.set_ylabel("train loss")
    ax.set_title(f"LR range test: {'/'.join(run_dir.resolve().parts[-2:])}", fontsize=9)
    ax.legend(loc="upper right", bbox_to_anchor=(0.93, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out, s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Plot an lr range test run (sched=lr_range_test) and suggest a peak lr."
    )
    parser.add_argument("run_dir", help="the run directory, holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default: <run_dir>/lr_range_test.png)")
    args = parser.parse_args(argv)
    try:
        path, s = plot_lr_range_test(args.run_dir, args.out)
    except UserError as err:
        sys.exit(f"Error: {err}")
    print(
        f"Suggested lr: {s['suggested_lr']:.3g}  (loss lowest at {s['min_loss_lr']:.3g}, falls fastest at "
        f"{s['steepest_lr']:.3g})"
    )
    print(f"Plot: {path}")


if __name__ == "__main__":
    main()
